/* Pillow's 8-bit LANCZOS resize, bit for bit, for a batch of same-sized images and several output sizes at once.
 *
 * Pillow sums `pixel * k` in int32 with 22-bit fixed-point coefficients `k` and rounds as clip8((acc + 2^21) >> 22).
 * Here the sums run in float64: every partial sum is an integer far below 2^53, so it is exact in any order, and the
 * rounding then matches Pillow's integer code exactly.
 *
 * Layout: 16 image rows at a time are transposed into `rows_t [W][16]` doubles (`_lanczos_transpose.h`), so one
 * input column of 16 rows is two AVX-512 vectors (four AVX2, eight SSE2/NEON). Each output column then costs exactly
 * its filter window (no padding to a shared span): a window tap is one coefficient broadcast against those vectors.
 * The horizontal results are stored transposed too, `mid_t [column][row]`, and the vertical pass runs the same way
 * round: 8 output rows per block, several columns at a time.
 *
 * The loops are in `_lanczos_kernel.h`, compiled once per instruction set (AVX-512, AVX2, and a baseline for any
 * CPU) and picked at run time. The Python side (`medscale/dedup/native.py`) builds the coefficient tables once per
 * (input size, output sizes), and this file checks every index against the buffers before it runs. The GIL is
 * released while the loops run.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#pragma GCC diagnostic ignored "-Wpsabi" /* the vector helpers are always inlined: no ABI crosses them */

#define LANES 8 /* output rows per block of the vertical pass */
#define ROWS 16 /* image rows per horizontal step */

#define INLINE static inline __attribute__((always_inline))

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define X86_LEVELS 1 /* AVX-512 and AVX2 builds (gcc's target pragmas); other compilers and CPUs get the baseline */
#endif

#include "_lanczos_transpose.h"

/* Instruction-set levels: 1 baseline (any CPU; scalar transposition), 3 x86-64-v3 (AVX2, FMA; unpack
 * transposition), 4 x86-64-v4 (AVX-512; gather + byte-permute transposition where AVX512-VBMI exists). 0 asks for
 * the best one. */
static int best_level(void) {
#ifdef X86_LEVELS
    __builtin_cpu_init();
    if (__builtin_cpu_supports("x86-64-v4")) return 4;
    if (__builtin_cpu_supports("x86-64-v3")) return 3;
#endif
    return 1;
}

/* The level to run for `asked`, or 0 (with a Python error set) when this CPU cannot run it. */
static int resolve_level(int asked) {
    const int best = best_level();
    if (asked == 0) return best;
    if ((asked == 1 || asked == 3 || asked == 4) && asked <= best) return asked;
    PyErr_Format(PyExc_ValueError, "instruction-set level %d is not available on this CPU (best: %d)", asked, best);
    return 0;
}

/* ---- the jobs, and the kernels compiled per instruction set ---- */

typedef struct {
    Py_ssize_t first, columns; /* the horizontal columns [first, first + columns) this height reads */
    Py_ssize_t blocks;         /* blocks of 8 output rows */
    const int32_t *start;      /* [blocks] first input row of each block's span */
    const int32_t *taps;       /* [blocks] */
    const double *coef;        /* [sum(taps)][8] */
    uint8_t *out;              /* [n][columns][blocks * 8] */
} VerticalPlan;

typedef struct {
    const uint8_t *images;
    Py_ssize_t n, h, w;
    Py_ssize_t pairs;      /* the horizontal pass, in pairs of output columns */
    const int32_t *hstart; /* [pairs] */
    const int32_t *htaps;  /* [pairs] */
    const double *hcoef;   /* [sum(htaps)][2] */
    const VerticalPlan *plans;
    Py_ssize_t nplans;
    double *rows_t; /* [w][16] scratch */
    double *mid_t;  /* [2 * pairs][stride] scratch */
    Py_ssize_t stride;
    TransposeFn transpose;
} Job;

/* The k-th smallest of v[0..n) (reorders v): Hoare's quickselect. */
static double select_kth(double *v, int n, int k) {
    int lo = 0, hi = n - 1;
    while (lo < hi) {
        const double pivot = v[(lo + hi) / 2];
        int i = lo, j = hi;
        while (i <= j) {
            while (v[i] < pivot) i++;
            while (v[j] > pivot) j--;
            if (i <= j) {
                const double t = v[i];
                v[i++] = v[j], v[j--] = t;
            }
        }
        if (k <= j) hi = j;
        else if (k >= i) lo = i;
        else return v[k];
    }
    return v[k];
}

/* numpy's median of 64 values: the mean of the 32nd and 33rd smallest. */
static double median64(const double *values) {
    double v[64];
    memcpy(v, values, sizeof v);
    const double upper = select_kth(v, 64, 32), lower = select_kth(v, 32, 31);
    return (lower + upper) / 2.0;
}

#ifdef X86_LEVELS
#pragma GCC push_options
#pragma GCC target("arch=x86-64-v4")
#define VL 8
#define SUFFIX v4
#define PIN 1
#include "_lanczos_kernel.h"
#undef VL
#undef SUFFIX
#undef PIN
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("arch=x86-64-v3")
#define VL 4
#define SUFFIX v3
#define PIN 0
#include "_lanczos_kernel.h"
#undef VL
#undef SUFFIX
#undef PIN
#pragma GCC pop_options
#endif

#define VL 2 /* SSE2 on x86-64, NEON on arm64: 128-bit vectors exist everywhere */
#define SUFFIX base
#define PIN 0
#include "_lanczos_kernel.h"
#undef VL
#undef SUFFIX
#undef PIN

static void resize_batch(Job *job, int level) {
    job->transpose = transpose_scalar;
#ifdef X86_LEVELS
    if (level >= 3) job->transpose = level == 4 && has_vbmi() ? transpose_avx512 : transpose_avx2;
    if (level == 4) return resize_images_v4(job);
    if (level == 3) return resize_images_v3(job);
#endif
    (void)level;
    resize_images_base(job);
}

static void phash_low(const uint8_t *pixels, Py_ssize_t n, Py_ssize_t s, const double *dct_t, double *low,
                      double *median, double *scratch, int level) {
#ifdef X86_LEVELS
    if (level == 4) return phash_low_v4(pixels, n, s, dct_t, low, median, scratch);
    if (level == 3) return phash_low_v3(pixels, n, s, dct_t, low, median, scratch);
#endif
    (void)level;
    phash_low_base(pixels, n, s, dct_t, low, median, scratch);
}

/* ---- the Python entry point: argument checks, then the loops without the GIL ---- */

static int need(Py_buffer *buf, Py_ssize_t bytes, const char *what) {
    if (buf->len < bytes) {
        PyErr_Format(PyExc_ValueError, "%s holds %zd bytes, needs %zd", what, buf->len, bytes);
        return 0;
    }
    return 1;
}

/* Sum of `taps` after checking every window [start, start + taps) lies in [0, limit); -1 on a bad window. */
static Py_ssize_t check_windows(const int32_t *start, const int32_t *taps, Py_ssize_t count, Py_ssize_t limit,
                                const char *what) {
    Py_ssize_t total = 0;
    for (Py_ssize_t k = 0; k < count; k++) {
        if (start[k] < 0 || taps[k] < 0 || start[k] + taps[k] > limit) {
            PyErr_Format(PyExc_ValueError, "%s window %zd [%d, %d) lies outside [0, %zd)", what, k, start[k],
                         start[k] + taps[k], limit);
            return -1;
        }
        total += taps[k];
    }
    return total;
}

/* resize(images, n, h, w, hstart, htaps, hcoef, plans, level): the horizontal pass as pairs of columns (hstart, htaps:
 * int32 [pairs]; hcoef: float64 [sum(htaps)][2]); plans: a sequence of (first, columns, start, taps, coef, out)
 * tuples, one per output height. See native.py. */
static PyObject *resize(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer images, hstart, htaps, hcoef;
    Py_ssize_t n, h, w;
    PyObject *plan_seq;
    int level;
    if (!PyArg_ParseTuple(args, "y*nnny*y*y*Oi", &images, &n, &h, &w, &hstart, &htaps, &hcoef, &plan_seq, &level))
        return NULL;
    PyObject *result = NULL, *fast = NULL;
    Py_ssize_t nplans = 0, held = 0;
    VerticalPlan *plans = NULL;
    Py_buffer *bufs = NULL; /* 3 read buffers + 1 write buffer per plan */
    double *rows_t = NULL, *mid_t = NULL;
    const Py_ssize_t npairs = htaps.len / (Py_ssize_t)sizeof(int32_t), ncols = 2 * npairs;
    const Py_ssize_t stride = (h + ROWS - 1) / ROWS * ROWS; /* rows of mid_t per column, padded to whole steps */
    if (!(level = resolve_level(level)) || n < 0 || h <= 0 || w <= 0 || !need(&images, n * h * w, "images") ||
        !need(&hstart, npairs * (Py_ssize_t)sizeof(int32_t), "hstart"))
        goto done;
    const Py_ssize_t htotal = check_windows(hstart.buf, htaps.buf, npairs, w, "horizontal");
    if (htotal < 0 || !need(&hcoef, 2 * htotal * (Py_ssize_t)sizeof(double), "hcoef")) goto done;
    if (!(fast = PySequence_Fast(plan_seq, "plans must be a sequence"))) goto done;
    nplans = PySequence_Fast_GET_SIZE(fast);
    plans = calloc(nplans ? nplans : 1, sizeof(VerticalPlan));
    bufs = calloc(nplans ? nplans * 4 : 1, sizeof(Py_buffer));
    if (!plans || !bufs) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t s = 0; s < nplans; s++) {
        Py_buffer *b = bufs + 4 * s;
        VerticalPlan *v = &plans[s];
        if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(fast, s), "nny*y*y*w*", &v->first, &v->columns, &b[0], &b[1],
                              &b[2], &b[3]))
            goto done;
        held = s + 1;
        v->blocks = b[1].len / (Py_ssize_t)sizeof(int32_t);
        v->start = b[0].buf, v->taps = b[1].buf, v->coef = b[2].buf, v->out = b[3].buf;
        if (v->first < 0 || v->columns < 0 || v->first + v->columns > ncols) {
            PyErr_SetString(PyExc_ValueError, "vertical plan reads columns that the horizontal pass does not make");
            goto done;
        }
        if (!need(&b[0], v->blocks * (Py_ssize_t)sizeof(int32_t), "vertical start")) goto done;
        const Py_ssize_t vtotal = check_windows(v->start, v->taps, v->blocks, h, "vertical");
        if (vtotal < 0 || !need(&b[2], vtotal * LANES * (Py_ssize_t)sizeof(double), "vertical coef") ||
            !need(&b[3], n * v->columns * v->blocks * LANES, "out"))
            goto done;
    }
    /* 64-byte aligned: every vector load then stays within one cache line */
    if (posix_memalign((void **)&rows_t, 64, sizeof(double) * ROWS * w)) rows_t = NULL;
    if (posix_memalign((void **)&mid_t, 64, sizeof(double) * stride * (ncols ? ncols : 1))) mid_t = NULL;
    if (!rows_t || !mid_t) {
        PyErr_NoMemory();
        goto done;
    }
    Job job = {images.buf, n, h, w, npairs, hstart.buf, htaps.buf, hcoef.buf, plans, nplans, rows_t, mid_t, stride, NULL};
    Py_BEGIN_ALLOW_THREADS
    resize_batch(&job, level);
    Py_END_ALLOW_THREADS
    result = Py_NewRef(Py_None);
done:
    for (Py_ssize_t s = 0; s < held; s++)
        for (int k = 0; k < 4; k++) PyBuffer_Release(&bufs[4 * s + k]);
    free(bufs), free(plans), free(rows_t), free(mid_t);
    Py_XDECREF(fast);
    PyBuffer_Release(&images), PyBuffer_Release(&hstart), PyBuffer_Release(&htaps), PyBuffer_Release(&hcoef);
    return result;
}

/* phash_low(pixels, n, s, dct_t, low, median, level): see phash_low_body; dct_t is [s][8] float64. */
static PyObject *py_phash_low(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer pixels, dct, low, median;
    Py_ssize_t n, s;
    int level;
    if (!PyArg_ParseTuple(args, "y*nny*w*w*i", &pixels, &n, &s, &dct, &low, &median, &level)) return NULL;
    PyObject *result = NULL;
    double *scratch = NULL;
    if (!(level = resolve_level(level)) || n < 0 || s <= 0 || !need(&pixels, n * s * s, "pixels") || !need(&dct, 8 * s * (Py_ssize_t)sizeof(double), "dct") ||
        !need(&low, n * 64 * (Py_ssize_t)sizeof(double), "low") || !need(&median, n * (Py_ssize_t)sizeof(double), "median"))
        goto done;
    if (posix_memalign((void **)&scratch, 64, sizeof(double) * (8 * s + 64))) {
        PyErr_NoMemory();
        goto done;
    }
    Py_BEGIN_ALLOW_THREADS
    phash_low(pixels.buf, n, s, dct.buf, low.buf, median.buf, scratch, level);
    Py_END_ALLOW_THREADS
    result = Py_NewRef(Py_None);
done:
    free(scratch);
    PyBuffer_Release(&pixels), PyBuffer_Release(&dct), PyBuffer_Release(&low), PyBuffer_Release(&median);
    return result;
}

static PyObject *levels(PyObject *self, PyObject *unused) {
    (void)self, (void)unused;
    const int best = best_level();
    return best == 4 ? Py_BuildValue("(iii)", 1, 3, 4) : best == 3 ? Py_BuildValue("(ii)", 1, 3) : Py_BuildValue("(i)", 1);
}

static PyMethodDef methods[] = {
    {"levels", levels, METH_NOARGS, "The instruction-set levels this CPU can run: 1 baseline, 3 x86-64-v3, 4 x86-64-v4."},
    {"resize", resize, METH_VARARGS, "Pillow's 8-bit LANCZOS resize of a batch to several sizes (see native.py)."},
    {"phash_low", py_phash_low, METH_VARARGS, "pHash's 8x8 DCT corner and its median, per image (see native.py)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_lanczos", NULL, -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__lanczos(void) { return PyModule_Create(&module); }
