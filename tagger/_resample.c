/*
 * tagger._resample: Pillow's 8-bit convolution resize, the same integers, faster.
 *
 * The model's input must be bit-identical to the reference path (Pillow's Image.resize with a
 * box, bilinear or bicubic), because near ties flip on a single 8-bit step. Pillow computes each
 * output as a fixed-point sum of 8-bit pixels times 22-bit integer weights, one channel at a time
 * in scalar loops. Here the same weights are made the same way (double precision, the same
 * expressions in the same order, then rounded to integers), and the same integer sums are
 * formed with SIMD lanes over the four bytes of RGBX pixels and two taps at a time. Integer
 * addition is exact in any order, so the results are the same bits.
 *
 * Only the horizontal-then-vertical pass order is done here; tagger.decode decides when Pillow
 * would choose it and uses Pillow itself otherwise.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define PRECISION_BITS (32 - 8 - 2)
#define HALF (1 << (PRECISION_BITS - 1))


typedef double (*filter_fn)(double);

static double bilinear(double x) {
    if (x < 0.0) x = -x;
    return x < 1.0 ? 1.0 - x : 0.0;
}

static double bicubic(double x) {
    const double a = -0.5;
    if (x < 0.0) x = -x;
    if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
    if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
    return 0.0;
}

/* One pass's taps: for output i, `count[i]` weights from input `first[i]`, `size` slots each. */
typedef struct {
    int size;
    int *first;
    int *count;
    int32_t *weight;
} Taps;

static void taps_free(Taps *t) {
    free(t->first);
    free(t->count);
    free(t->weight);
}

/* The weights as Pillow makes them: float box edges, double arithmetic, then 22-bit integers. */
static int taps_make(Taps *t, int in_size, float in0, float in1, int out_size, filter_fn filter, double support) {
    double scale = (double)(in1 - in0) / out_size;
    double filterscale = scale < 1.0 ? 1.0 : scale;
    double reach = support * filterscale;
    double *w;
    t->size = (int)ceil(reach) * 2 + 1;
    t->first = malloc(sizeof(int) * out_size);
    t->count = malloc(sizeof(int) * out_size);
    t->weight = calloc((size_t)out_size * t->size, sizeof(int32_t));
    w = malloc(sizeof(double) * t->size);
    if (!t->first || !t->count || !t->weight || !w) {
        free(w);
        taps_free(t);
        return 0;
    }
    for (int i = 0; i < out_size; i++) {
        double center = in0 + (i + 0.5) * scale;
        double total = 0.0, step = 1.0 / filterscale;
        int lo = (int)(center - reach + 0.5), hi = (int)(center + reach + 0.5);
        if (lo < 0) lo = 0;
        if (hi > in_size) hi = in_size;
        hi -= lo;
        for (int x = 0; x < hi; x++) {
            w[x] = filter((x + lo - center + 0.5) * step);
            total += w[x];
        }
        for (int x = 0; x < hi; x++) {
            double v = total != 0.0 ? w[x] / total : w[x];
            t->weight[(size_t)i * t->size + x] = v < 0 ? (int32_t)(-0.5 + v * (1 << PRECISION_BITS))
                                                       : (int32_t)(0.5 + v * (1 << PRECISION_BITS));
        }
        t->first[i] = lo;
        t->count[i] = hi;
    }
    free(w);
    return 1;
}

static inline uint8_t clip8(int32_t sum) {
    int32_t v = sum >> PRECISION_BITS;
    return v < 0 ? 0 : v > 255 ? 255 : (uint8_t)v;
}

/* One output pixel's four channel sums over its taps, without the rounding half. */
static inline void sums_scalar(const uint8_t *p, const int32_t *k, int n, int32_t s[4]) {
    s[0] = s[1] = s[2] = s[3] = 0;
    for (int x = 0; x < n; x++)
        for (int c = 0; c < 4; c++) s[c] += p[x * 4 + c] * k[x];
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define HAVE_AVX2_PATH 1
/* Two taps per step: the 8 bytes of two RGBX pixels widened to 8 int32 lanes, times {w0 x4, w1 x4}. */
__attribute__((target("avx2"))) static void sums_avx2(const uint8_t *p, const int32_t *k, int n, int32_t s[4]) {
    __m256i acc = _mm256_setzero_si256();
    int x = 0;
    for (; x + 1 < n; x += 2) {
        __m256i px = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(p + x * 4)));
        __m256i w = _mm256_set_m128i(_mm_set1_epi32(k[x + 1]), _mm_set1_epi32(k[x]));
        acc = _mm256_add_epi32(acc, _mm256_mullo_epi32(px, w));
    }
    __m128i sum = _mm_add_epi32(_mm256_castsi256_si128(acc), _mm256_extracti128_si256(acc, 1));
    _mm_storeu_si128((__m128i *)s, sum);
    if (x < n)
        for (int c = 0; c < 4; c++) s[c] += p[x * 4 + c] * k[x];
}
#endif

static int simd_available(void) {
#ifdef HAVE_AVX2_PATH
    return __builtin_cpu_supports("avx2");
#else
    return 0;
#endif
}

/* Rows [row0, row0 + rows) of the RGBX source, resampled across to out_w RGBX pixels each. */
static void horizontal(const uint8_t *src, Py_ssize_t stride, int row0, int rows, const Taps *t, int out_w,
                       uint8_t *dst, int simd) {
    for (int y = 0; y < rows; y++) {
        const uint8_t *line = src + (Py_ssize_t)(row0 + y) * stride;
        uint8_t *out = dst + (size_t)y * out_w * 4;
        for (int i = 0; i < out_w; i++) {
            const int32_t *k = t->weight + (size_t)i * t->size;
            const uint8_t *p = line + (size_t)t->first[i] * 4;
            int32_t s[4];
#ifdef HAVE_AVX2_PATH
            if (simd)
                sums_avx2(p, k, t->count[i], s);
            else
#endif
                sums_scalar(p, k, t->count[i], s);
            for (int c = 0; c < 4; c++) out[i * 4 + c] = clip8(HALF + s[c]);
        }
    }
    (void)simd;
}

/* Columns resampled down to out_h rows, from the horizontal pass's rows; RGB out (X dropped). */
static void vertical(const uint8_t *src, int width, const Taps *t, int out_h, int row0, int32_t *acc, uint8_t *dst) {
    int n = width * 4;
    for (int y = 0; y < out_h; y++) {
        const int32_t *k = t->weight + (size_t)y * t->size;
        for (int j = 0; j < n; j++) acc[j] = HALF;
        for (int r = 0; r < t->count[y]; r++) {
            const uint8_t *line = src + (size_t)(t->first[y] - row0 + r) * n;
            int32_t w = k[r];
            for (int j = 0; j < n; j++) acc[j] += line[j] * w;
        }
        uint8_t *out = dst + (size_t)y * width * 3;
        for (int i = 0; i < width; i++) {
            out[i * 3 + 0] = clip8(acc[i * 4 + 0]);
            out[i * 3 + 1] = clip8(acc[i * 4 + 1]);
            out[i * 3 + 2] = clip8(acc[i * 4 + 2]);
        }
    }
}

static PyObject *resize_rgbx(PyObject *self, PyObject *args) {
    Py_buffer view;
    int width, height, out_w, out_h, kind, simd = -1, ok = 0;
    float box[4];
    PyObject *result = NULL;
    Taps across = {0}, down = {0};
    uint8_t *temp = NULL;
    int32_t *acc = NULL;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*ii(ffff)iii|i", &view, &width, &height, &box[0], &box[1], &box[2], &box[3],
                          &out_w, &out_h, &kind, &simd))
        return NULL;
    if (width <= 0 || height <= 0 || out_w <= 0 || out_h <= 0 || kind < 0 || kind > 1 ||
        view.len != (Py_ssize_t)width * height * 4 || !(box[0] >= 0 && box[1] >= 0 && box[2] <= width &&
        box[3] <= height && box[0] < box[2] && box[1] < box[3])) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "resize_rgbx: bad sizes, box or filter");
        return NULL;
    }
    result = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)out_w * out_h * 3);
    if (!result) {
        PyBuffer_Release(&view);
        return NULL;
    }
    if (simd != 0) simd = simd_available();
    Py_BEGIN_ALLOW_THREADS
    filter_fn filter = kind ? bicubic : bilinear;
    double support = kind ? 2.0 : 1.0;
    if (taps_make(&down, height, box[1], box[3], out_h, filter, support)) {
        if (taps_make(&across, width, box[0], box[2], out_w, filter, support)) {
            int row0 = down.first[0];
            int rows = down.first[out_h - 1] + down.count[out_h - 1] - row0;
            temp = malloc((size_t)rows * out_w * 4);
            acc = malloc(sizeof(int32_t) * out_w * 4);
            if (temp && acc) {
                horizontal(view.buf, (Py_ssize_t)width * 4, row0, rows, &across, out_w, temp, simd);
                vertical(temp, out_w, &down, out_h, row0, acc, (uint8_t *)PyBytes_AS_STRING(result));
                ok = 1;
            }
            taps_free(&across);
        }
        taps_free(&down);
    }
    free(temp);
    free(acc);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&view);
    if (!ok) {
        Py_DECREF(result);
        return PyErr_NoMemory();
    }
    return result;
}

static PyObject *simd_name(PyObject *self, PyObject *args) {
    (void)self;
    (void)args;
    return PyUnicode_FromString(simd_available() ? "avx2" : "none");
}

static PyMethodDef methods[] = {
    {"resize_rgbx", resize_rgbx, METH_VARARGS,
     "resize_rgbx(pixels, width, height, box, out_width, out_height, bicubic, simd=-1) -> RGB bytes\n\n"
     "Pillow's Image.resize((out_width, out_height), BICUBIC or BILINEAR, box=box) of an RGBX\n"
     "image, horizontal pass first, bit for bit. simd=0 uses the plain C loop (for tests)."},
    {"simd", simd_name, METH_NOARGS, "The SIMD path this CPU gets: 'avx2' or 'none'."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_resample", NULL, -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__resample(void) { return PyModule_Create(&module); }
