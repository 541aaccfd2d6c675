/* 16 rows of bytes -> rows_t [w][16] doubles (rows past `nr` are zero), the layout `_lanczos_kernel.h` reads:
 * a scalar loop for any CPU, an unpack network for AVX2, a gather + byte permute for AVX-512 (VBMI).
 * Included by `_lanczos.c` after its shared definitions (ROWS, X86_LEVELS). */
typedef void (*TransposeFn)(const uint8_t *src, Py_ssize_t w, int nr, double *dst);

static void transpose_scalar(const uint8_t *src, Py_ssize_t w, int nr, double *dst) {
    for (Py_ssize_t x = 0; x < w; x++)
        for (int r = 0; r < ROWS; r++) dst[x * ROWS + r] = r < nr ? src[r * w + x] : 0.0;
}

#ifdef X86_LEVELS
#include <immintrin.h>

/* 8 rows x 8 columns at a time: gather one 8-byte piece of each row, then for each column one byte permute puts
 * its 8 bytes into the low bytes of 8 zeroed 64-bit lanes, and one conversion makes them doubles. */
__attribute__((target("avx512f,avx512bw,avx512dq,avx512vbmi")))
static void transpose_avx512(const uint8_t *src, Py_ssize_t w, int nr, double *dst) {
    if (w < 8) {
        transpose_scalar(src, w, nr, dst);
        return;
    }
    __m512i pick[8]; /* pick[x]: lane r's low byte <- byte x of lane r */
    for (int x = 0; x < 8; x++) {
        uint8_t order[64] = {0};
        for (int r = 0; r < 8; r++) order[r * 8] = (uint8_t)(r * 8 + x);
        pick[x] = _mm512_loadu_si512(order);
    }
    const __mmask64 low_bytes = 0x0101010101010101ULL;
    const __m512i offsets = _mm512_mullo_epi64(_mm512_set_epi64(7, 6, 5, 4, 3, 2, 1, 0), _mm512_set1_epi64(w));
    __mmask8 present[ROWS / 8]; /* the rows of each group of 8 that exist; missing rows read as zero */
    for (int g = 0; g < ROWS / 8; g++) {
        const int rows = nr - 8 * g < 0 ? 0 : (nr - 8 * g > 8 ? 8 : nr - 8 * g);
        present[g] = (__mmask8)((1u << rows) - 1);
    }
    Py_ssize_t x0 = 0;
    for (; x0 + 8 <= w; x0 += 8) {
        for (int g = 0; g < ROWS / 8; g++) {
            const __m512i pieces = _mm512_mask_i64gather_epi64(_mm512_setzero_si512(), present[g], offsets,
                                                               (const void *)(src + g * 8 * w + x0), 1);
            for (int x = 0; x < 8; x++)
                _mm512_storeu_pd(dst + (x0 + x) * ROWS + g * 8,
                                 _mm512_cvtepi64_pd(_mm512_maskz_permutexvar_epi8(low_bytes, pick[x], pieces)));
        }
    }
    for (; x0 < w; x0++)
        for (int r = 0; r < ROWS; r++) dst[x0 * ROWS + r] = r < nr ? src[r * w + x0] : 0.0;
}

/* The same with AVX2: 8 rows x 8 columns of bytes transposed by three rounds of unpacks, leaving each column's 8
 * bytes in one half of a 128-bit register, then widened 4 at a time. */
__attribute__((target("avx2")))
static inline void widen_column_avx2(__m128i column_bytes, double *dst) {
    _mm256_storeu_pd(dst, _mm256_cvtepi32_pd(_mm_cvtepu8_epi32(column_bytes)));
    _mm256_storeu_pd(dst + 4, _mm256_cvtepi32_pd(_mm_cvtepu8_epi32(_mm_srli_si128(column_bytes, 4))));
}

__attribute__((target("avx2")))
static void transpose_avx2(const uint8_t *src, Py_ssize_t w, int nr, double *dst) {
    if (w < 8) {
        transpose_scalar(src, w, nr, dst);
        return;
    }
    Py_ssize_t x0 = 0;
    for (; x0 + 8 <= w; x0 += 8) {
        for (int g = 0; g < ROWS / 8; g++) {
            __m128i r[8];
            for (int k = 0; k < 8; k++) /* missing rows read as zero */
                r[k] = 8 * g + k < nr ? _mm_loadl_epi64((const __m128i *)(src + (8 * g + k) * w + x0)) : _mm_setzero_si128();
            const __m128i t0 = _mm_unpacklo_epi8(r[0], r[1]), t1 = _mm_unpacklo_epi8(r[2], r[3]);
            const __m128i t2 = _mm_unpacklo_epi8(r[4], r[5]), t3 = _mm_unpacklo_epi8(r[6], r[7]);
            const __m128i u0 = _mm_unpacklo_epi16(t0, t1), u1 = _mm_unpackhi_epi16(t0, t1);
            const __m128i u2 = _mm_unpacklo_epi16(t2, t3), u3 = _mm_unpackhi_epi16(t2, t3);
            const __m128i pairs[4] = {_mm_unpacklo_epi32(u0, u2), _mm_unpackhi_epi32(u0, u2),
                                      _mm_unpacklo_epi32(u1, u3), _mm_unpackhi_epi32(u1, u3)};
            for (int k = 0; k < 4; k++) { /* pairs[k]: column 2k's 8 rows, then column 2k + 1's */
                widen_column_avx2(pairs[k], dst + (x0 + 2 * k) * ROWS + g * 8);
                widen_column_avx2(_mm_srli_si128(pairs[k], 8), dst + (x0 + 2 * k + 1) * ROWS + g * 8);
            }
        }
    }
    for (; x0 < w; x0++)
        for (int r = 0; r < ROWS; r++) dst[x0 * ROWS + r] = r < nr ? src[r * w + x0] : 0.0;
}

static int has_vbmi(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512vbmi");
}
#else
static int has_vbmi(void) { return 0; }
#endif

