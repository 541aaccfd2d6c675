/* The arithmetic of `_lanczos.c`, written once for a vector of VL doubles and included once per instruction set
 * (VL = 8 for AVX-512, 4 for AVX2, 2 for SSE2 / NEON), each time with its own SUFFIX and target options, so that
 * every build uses its machine's own vector width (gcc spills vectors wider than the target's registers to the
 * stack, which made a single 512-bit source 40x slower on AVX2).
 *
 * Before including: VL, SUFFIX, PIN (1 where a loaded vector must be pinned to a register, see `pin`), and the
 * shared definitions of `_lanczos.c` (ROWS, LANES, Job, VerticalPlan, INLINE).
 */
#define CAT_(a, b) a##_##b
#define CAT(a, b) CAT_(a, b)
#define K(name) CAT(name, SUFFIX)

#define VD K(vd)
#define VDU K(vdu)
#define VI K(vi)
#define VB K(vb)
typedef double VD __attribute__((vector_size(VL * 8)));
typedef double VDU __attribute__((vector_size(VL * 8), aligned(8)));
typedef int32_t VI __attribute__((vector_size(VL * 4)));
typedef uint8_t VB __attribute__((vector_size(VL)));

#define NV (ROWS / VL)           /* vectors per input column of 16 rows */
#define NB (LANES / VL)          /* vectors per block of 8 output rows */
#define PHASES (NV >= 4 ? 1 : 2) /* taps in flight: at least 8 accumulators to hide the FMA latency */
#define VCOLS (8 / NB)           /* columns in flight in the vertical pass: 8 accumulators */

INLINE VD K(load)(const double *p) { return *(const VDU *)p; }
INLINE void K(store)(double *p, VD v) { *(VDU *)p = v; }

/* Pillow's clip8((acc + 2^21) >> 22) on exact integer sums. */
INLINE VI K(round)(VD acc) {
    VI q = __builtin_convertvector(acc + 2097152.0, VI) >> 22;
    q &= ~(q < 0);
    const VI over = q > 255;
    return (q & ~over) | (255 & over);
}

/* Two output columns of the horizontal pass for 16 rows, over the union of their windows (coefficients outside a
 * column's own window are zero). rows_t: [w][16]; coef: [taps][2]; out0, out1: 16 doubles each. Each loaded row
 * vector serves both columns; the exact sums do not depend on the order they are added in. */
INLINE void K(horizontal_pair)(const double *rows_t, const double *coef, int start, int taps, double *out0,
                               double *out1) {
    VD a[PHASES][NV], b[PHASES][NV];
    for (int ph = 0; ph < PHASES; ph++)
        for (int v = 0; v < NV; v++) a[ph][v] = b[ph][v] = (VD){0};
    const double *p = rows_t + (Py_ssize_t)start * ROWS;
    int j = 0;
    for (; j + PHASES <= taps; j += PHASES, p += PHASES * ROWS, coef += 2 * PHASES) {
        VD r[PHASES][NV];
        for (int ph = 0; ph < PHASES; ph++)
            for (int v = 0; v < NV; v++) {
                r[ph][v] = K(load)(p + ph * ROWS + v * VL);
#if PIN /* gcc would fold this load into both multiply-adds, loading it twice; the loop is bound by loads */
                __asm__("" : "+v"(r[ph][v]));
#endif
            }
        for (int ph = 0; ph < PHASES; ph++)
            for (int v = 0; v < NV; v++) a[ph][v] += r[ph][v] * coef[2 * ph], b[ph][v] += r[ph][v] * coef[2 * ph + 1];
    }
    for (; j < taps; j++, p += ROWS, coef += 2)
        for (int v = 0; v < NV; v++) {
            const VD r = K(load)(p + v * VL);
            a[0][v] += r * coef[0], b[0][v] += r * coef[1];
        }
    for (int v = 0; v < NV; v++) {
        VD sa = a[0][v], sb = b[0][v];
        for (int ph = 1; ph < PHASES; ph++) sa += a[ph][v], sb += b[ph][v];
        K(store)(out0 + v * VL, __builtin_convertvector(K(round)(sa), VD));
        K(store)(out1 + v * VL, __builtin_convertvector(K(round)(sb), VD));
    }
}

/* One block of 8 output rows of the vertical pass for `nc` (compile-time constant) columns.
 * mid_t: [nc][stride] horizontal results; coef: [taps][8]; out: column c's 8 bytes at out + c * out_stride. */
INLINE void K(vertical_block)(int nc, const double *mid_t, Py_ssize_t stride, const double *coef, int start,
                              int taps, uint8_t *out, Py_ssize_t out_stride) {
    VD acc[VCOLS][NB];
    for (int c = 0; c < nc; c++)
        for (int v = 0; v < NB; v++) acc[c][v] = (VD){0};
    for (int j = 0; j < taps; j++) {
        VD k[NB];
        for (int v = 0; v < NB; v++) k[v] = K(load)(coef + (Py_ssize_t)j * LANES + v * VL);
        for (int c = 0; c < nc; c++) {
            const double x = mid_t[c * stride + start + j];
            for (int v = 0; v < NB; v++) acc[c][v] += k[v] * x;
        }
    }
    for (int c = 0; c < nc; c++)
        for (int v = 0; v < NB; v++) {
            const VB q = __builtin_convertvector(K(round)(acc[c][v]), VB);
            memcpy(out + c * out_stride + v * VL, &q, sizeof q);
        }
}

/* Both passes for every image of the job. */
static void K(resize_images)(const Job *job) {
    const Py_ssize_t h = job->h, w = job->w, stride = job->stride;
    double *rows_t = job->rows_t, *mid_t = job->mid_t;
    const uint8_t *end = job->images + job->n * h * w;
    for (Py_ssize_t i = 0; i < job->n; i++) {
        const uint8_t *img = job->images + i * h * w;
        for (Py_ssize_t y0 = 0; y0 < h; y0 += ROWS) {
            job->transpose(img + y0 * w, w, (int)(h - y0 < ROWS ? h - y0 : ROWS), rows_t);
            /* fetch the next 16 rows (or the next image's first) while this step's arithmetic runs */
            const uint8_t *next = img + (y0 + ROWS) * w;
            for (Py_ssize_t byte = 0; byte < ROWS * w && next + byte < end; byte += 64) __builtin_prefetch(next + byte);
            const double *coef = job->hcoef;
            for (Py_ssize_t c = 0; c < job->pairs; c++) {
                double *out = mid_t + 2 * c * stride + y0;
                K(horizontal_pair)(rows_t, coef, job->hstart[c], job->htaps[c], out, out + stride);
                coef += 2 * (Py_ssize_t)job->htaps[c];
            }
        }
        for (Py_ssize_t s = 0; s < job->nplans; s++) {
            const VerticalPlan *v = &job->plans[s];
            const Py_ssize_t out_stride = v->blocks * LANES;
            const double *coef = v->coef;
            for (Py_ssize_t b = 0; b < v->blocks; b++) {
                uint8_t *out = v->out + i * v->columns * out_stride + b * LANES;
                const int start = v->start[b], taps = v->taps[b];
                for (Py_ssize_t c = 0; c < v->columns;) {
                    const double *src = mid_t + (v->first + c) * stride;
                    uint8_t *dst = out + c * out_stride;
                    if (v->columns - c >= VCOLS) {
                        K(vertical_block)(VCOLS, src, stride, coef, start, taps, dst, out_stride);
                        c += VCOLS;
                    } else {
                        K(vertical_block)(1, src, stride, coef, start, taps, dst, out_stride);
                        c += 1;
                    }
                }
                coef += (Py_ssize_t)taps * LANES;
            }
        }
    }
}

/* pHash's low frequencies, per image: low = D X D^T, the [8, 8] corner of the unnormalised 2D DCT-II, and the
 * median of its 64 values. pixels: [n][s][s] bytes; dct_t: [s][8], the first 8 rows of the DCT matrix transposed;
 * low: [n][64]; median: [n]; scratch: [s][8]. */
static void K(phash_low)(const uint8_t *pixels, Py_ssize_t n, Py_ssize_t s, const double *dct_t, double *low,
                         double *median, double *scratch) {
    for (Py_ssize_t i = 0; i < n; i++) {
        const uint8_t *x = pixels + i * s * s;
        for (Py_ssize_t y = 0; y < s; y += 4) { /* rows: scratch[y][:] = sum_c x[y][c] * dct[:][c], 4 rows at once */
            const int rows = s - y < 4 ? (int)(s - y) : 4;
            VD acc[4][NB];
            for (int r = 0; r < 4; r++)
                for (int v = 0; v < NB; v++) acc[r][v] = (VD){0};
            for (Py_ssize_t c = 0; c < s; c++) {
                VD k[NB];
                for (int v = 0; v < NB; v++) k[v] = K(load)(dct_t + c * 8 + v * VL);
                for (int r = 0; r < 4; r++) {
                    const double p = r < rows ? (double)x[(y + r) * s + c] : 0.0;
                    for (int v = 0; v < NB; v++) acc[r][v] += k[v] * p;
                }
            }
            for (int r = 0; r < rows; r++)
                for (int v = 0; v < NB; v++) K(store)(scratch + (y + r) * 8 + v * VL, acc[r][v]);
        }
        double *out = low + i * 64;
        VD col[8][NB]; /* then columns: low[k][:] = sum_y dct[k][y] * scratch[y][:], all 8 rows k at once */
        for (int k = 0; k < 8; k++)
            for (int v = 0; v < NB; v++) col[k][v] = (VD){0};
        for (Py_ssize_t y = 0; y < s; y++) {
            VD row[NB];
            for (int v = 0; v < NB; v++) row[v] = K(load)(scratch + y * 8 + v * VL);
            for (int k = 0; k < 8; k++)
                for (int v = 0; v < NB; v++) col[k][v] += row[v] * dct_t[y * 8 + k];
        }
        for (int k = 0; k < 8; k++)
            for (int v = 0; v < NB; v++) K(store)(out + k * 8 + v * VL, col[k][v]);
        median[i] = median64(out);
    }
}

#undef VD
#undef VDU
#undef VI
#undef VB
#undef NV
#undef NB
#undef PHASES
#undef VCOLS
