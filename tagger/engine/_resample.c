/*
 * tagger._resample: Pillow's 8-bit convolution resize, the same integers, faster.
 *
 * The model's input must be bit-identical to the reference path (Pillow's Image.resize with a
 * box, bilinear or bicubic), because near ties flip on a single 8-bit step. Pillow computes each
 * output as a fixed-point sum of 8-bit pixels times 22-bit integer weights, one channel at a time
 * in scalar loops. Here the same weights are made the same way (double precision, the same
 * expressions in the same order, then rounded to integers), and the same integer sums are
 * formed in AVX2 lanes, 16 multiply-adds at a time (each weight split into two 16-bit halves, see
 * Split), in NEON lanes on ARM64 (the same split), or in a plain C loop on an x86 without AVX2. Integer addition is exact in any order, so
 * the results are the same bits either way.
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
/*
 * Each 22-bit weight w is split as w = hi * 2048 + lo (0 <= lo < 2048), so that both halves fit
 * 16 bits and pmaddwd can do 16 multiply-adds at once: sum(p * w) = 2048 * sum(p * hi) + sum(p * lo)
 * exactly, as every partial sum stays far inside 32 bits (8-bit pixels, at most a few hundred taps).
 * `split` holds, per output pixel and group of 4 taps, 16 lanes {w0 w1} x4 then {w2 w3} x4.
 */
typedef struct {
    int groups;       /* groups of 4 taps per output pixel (the rest is done one tap at a time) */
    int16_t *hi, *lo; /* out_w * groups * 16 lanes each */
} Split;

static int split_make(Split *sp, const Taps *t, int out_w) {
    sp->groups = (t->size + 3) / 4;
    sp->hi = aligned_alloc(32, sizeof(int16_t) * 16 * ((size_t)out_w * sp->groups + 1));
    sp->lo = aligned_alloc(32, sizeof(int16_t) * 16 * ((size_t)out_w * sp->groups + 1));
    if (!sp->hi || !sp->lo) return 0;
    for (int i = 0; i < out_w; i++) {
        const int32_t *k = t->weight + (size_t)i * t->size;
        for (int g = 0; g < sp->groups; g++) {
            int16_t *hi = sp->hi + ((size_t)i * sp->groups + g) * 16, *lo = sp->lo + ((size_t)i * sp->groups + g) * 16;
            for (int lane = 0; lane < 16; lane++) {
                int tap = 4 * g + (lane >= 8 ? 2 : 0) + (lane & 1);
                int32_t w = tap < t->count[i] ? k[tap] : 0; /* zero past the last tap: padding */
                hi[lane] = (int16_t)(w >> 11);
                lo[lane] = (int16_t)(w & 2047);
            }
        }
    }
    return 1;
}

static void split_free(Split *sp) {
    free(sp->hi);
    free(sp->lo);
}

/* Four taps per step: 4 RGBX pixels regrouped to {R0 R1 G0 G1 B0 B1 X0 X1 | R2 R3 ...}, widened
 * to 16 bits and multiply-added against the split weights. `vector_taps` is n rounded up to 4
 * where the row has the pixels to read (their weights are zero), else down. */
__attribute__((target("avx2"))) static inline void sums_avx2(const uint8_t *p, const int32_t *k, int n, int vector_taps,
                                                             const int16_t *hi, const int16_t *lo, int32_t s[4]) {
    const __m128i order = _mm_setr_epi8(0, 4, 1, 5, 2, 6, 3, 7, 8, 12, 9, 13, 10, 14, 11, 15);
    __m256i acc_hi = _mm256_setzero_si256(), acc_lo = _mm256_setzero_si256();
    int x = 0;
    for (; x < vector_taps; x += 4, hi += 16, lo += 16) {
        __m128i bytes = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(p + x * 4)), order);
        __m256i px = _mm256_cvtepu8_epi16(bytes);
        acc_hi = _mm256_add_epi32(acc_hi, _mm256_madd_epi16(px, _mm256_load_si256((const __m256i *)hi)));
        acc_lo = _mm256_add_epi32(acc_lo, _mm256_madd_epi16(px, _mm256_load_si256((const __m256i *)lo)));
    }
    __m128i h = _mm_add_epi32(_mm256_castsi256_si128(acc_hi), _mm256_extracti128_si256(acc_hi, 1));
    __m128i l = _mm_add_epi32(_mm256_castsi256_si128(acc_lo), _mm256_extracti128_si256(acc_lo, 1));
    _mm_storeu_si128((__m128i *)s, _mm_add_epi32(_mm_slli_epi32(h, 11), l));
    for (; x < n; x++)
        for (int c = 0; c < 4; c++) s[c] += p[x * 4 + c] * k[x];
}

__attribute__((target("avx2"))) static void rows_avx2(const uint8_t *src, Py_ssize_t stride, int width, int row0,
                                                      int rows, const Taps *t, const Split *sp, int out_w, uint8_t *dst) {
    for (int y = 0; y < rows; y++) {
        const uint8_t *line = src + (Py_ssize_t)(row0 + y) * stride;
        uint8_t *out = dst + (size_t)y * out_w * 4;
        for (int i = 0; i < out_w; i++) {
            int n = t->count[i], first = t->first[i], padded = (n + 3) & ~3;
            int32_t s[4];
            size_t at = (size_t)i * sp->groups * 16;
            sums_avx2(line + (size_t)first * 4, t->weight + (size_t)i * t->size, n,
                      first + padded <= width ? padded : n & ~3, sp->hi + at, sp->lo + at, s);
            for (int c = 0; c < 4; c++) out[i * 4 + c] = clip8(HALF + s[c]);
        }
    }
}
#endif

#if defined(__aarch64__)
#include <arm_neon.h>
#define HAVE_NEON_PATH 1
/* ARM64 (every one has NEON): two taps per step, each pixel's four bytes widened to 16 bits and
 * multiply-accumulated into 32-bit lanes against the weight's two 16-bit halves (as on x86). */
static inline void sums_neon(const uint8_t *p, const int32_t *k, int n, int32_t s[4]) {
    int32x4_t hi = vdupq_n_s32(0), lo = vdupq_n_s32(0);
    int x = 0;
    for (; x + 2 <= n; x += 2) {
        int16x8_t px = vreinterpretq_s16_u16(vmovl_u8(vld1_u8(p + x * 4)));
        hi = vmlal_n_s16(hi, vget_low_s16(px), (int16_t)(k[x] >> 11));
        lo = vmlal_n_s16(lo, vget_low_s16(px), (int16_t)(k[x] & 2047));
        hi = vmlal_n_s16(hi, vget_high_s16(px), (int16_t)(k[x + 1] >> 11));
        lo = vmlal_n_s16(lo, vget_high_s16(px), (int16_t)(k[x + 1] & 2047));
    }
    vst1q_s32(s, vaddq_s32(vreinterpretq_s32_u32(vshlq_n_u32(vreinterpretq_u32_s32(hi), 11)), lo));
    for (; x < n; x++)
        for (int c = 0; c < 4; c++) s[c] += p[x * 4 + c] * k[x];
}
#endif

static int simd_available(void) {
#if defined(HAVE_AVX2_PATH)
    return __builtin_cpu_supports("avx2");
#elif defined(HAVE_NEON_PATH)
    return 1;
#else
    return 0;
#endif
}

static const char *simd_label(void) {
#if defined(HAVE_NEON_PATH)
    return "neon";
#else
    return simd_available() ? "avx2" : "none";
#endif
}

/* Rows [row0, row0 + rows) of the RGBX source, resampled across to out_w RGBX pixels each. */
static int horizontal(const uint8_t *src, int width, int row0, int rows, const Taps *t, int out_w, uint8_t *dst,
                      int simd) {
    Py_ssize_t stride = (Py_ssize_t)width * 4;
#ifdef HAVE_AVX2_PATH
    if (simd) {
        Split sp = {0, NULL, NULL};
        int made = split_make(&sp, t, out_w);
        if (made) rows_avx2(src, stride, width, row0, rows, t, &sp, out_w, dst);
        split_free(&sp);
        return made;
    }
#endif
    for (int y = 0; y < rows; y++) {
        const uint8_t *line = src + (Py_ssize_t)(row0 + y) * stride;
        uint8_t *out = dst + (size_t)y * out_w * 4;
        for (int i = 0; i < out_w; i++) {
            int32_t s[4];
#ifdef HAVE_NEON_PATH
            if (simd)
                sums_neon(line + (size_t)t->first[i] * 4, t->weight + (size_t)i * t->size, t->count[i], s);
            else
#endif
                sums_scalar(line + (size_t)t->first[i] * 4, t->weight + (size_t)i * t->size, t->count[i], s);
            for (int c = 0; c < 4; c++) out[i * 4 + c] = clip8(HALF + s[c]);
        }
    }
    (void)simd;
    return 1;
}

#ifdef HAVE_AVX2_PATH
/* One output row: two source rows per step, their bytes interleaved {a0 b0 a1 b1 ...}, widened to
 * 16 bits and multiply-added against {hi_a hi_b} and {lo_a lo_b} (the split weights, as across). */
__attribute__((target("avx2"))) static void row_avx2(const uint8_t *src, int n, const int32_t *k, int count,
                                                     int32_t *acc_hi, int32_t *acc_lo) {
    int r = 0;
    for (int j = 0; j < n; j++) acc_hi[j] = acc_lo[j] = 0;
    for (; r + 2 <= count; r += 2) {
        const uint8_t *a = src + (size_t)r * n, *b = a + n;
        int32_t wa = k[r], wb = k[r + 1];
        __m256i hi = _mm256_set1_epi32((int32_t)(((uint32_t)(uint16_t)(wb >> 11) << 16) | (uint16_t)(wa >> 11)));
        __m256i lo = _mm256_set1_epi32((int32_t)(((uint32_t)(uint16_t)(wb & 2047) << 16) | (uint16_t)(wa & 2047)));
        int j = 0;
        for (; j + 16 <= n; j += 16) {
            __m128i va = _mm_loadu_si128((const __m128i *)(a + j)), vb = _mm_loadu_si128((const __m128i *)(b + j));
            __m256i first = _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(va, vb));
            __m256i second = _mm256_cvtepu8_epi16(_mm_unpackhi_epi8(va, vb));
            __m256i *h = (__m256i *)(acc_hi + j), *l = (__m256i *)(acc_lo + j);
            _mm256_storeu_si256(h, _mm256_add_epi32(_mm256_loadu_si256(h), _mm256_madd_epi16(first, hi)));
            _mm256_storeu_si256(h + 1, _mm256_add_epi32(_mm256_loadu_si256(h + 1), _mm256_madd_epi16(second, hi)));
            _mm256_storeu_si256(l, _mm256_add_epi32(_mm256_loadu_si256(l), _mm256_madd_epi16(first, lo)));
            _mm256_storeu_si256(l + 1, _mm256_add_epi32(_mm256_loadu_si256(l + 1), _mm256_madd_epi16(second, lo)));
        }
        for (; j < n; j++) {
            acc_hi[j] += a[j] * (wa >> 11) + b[j] * (wb >> 11);
            acc_lo[j] += a[j] * (wa & 2047) + b[j] * (wb & 2047);
        }
    }
    for (; r < count; r++) {
        const uint8_t *a = src + (size_t)r * n;
        for (int j = 0; j < n; j++) {
            acc_hi[j] += a[j] * (k[r] >> 11);
            acc_lo[j] += a[j] * (k[r] & 2047);
        }
    }
    for (int j = 0; j < n; j++) acc_hi[j] = (int32_t)((uint32_t)acc_hi[j] << 11) + acc_lo[j];
}
#endif

/* Columns resampled down to out_h rows, from the horizontal pass's rows; RGB out (X dropped).
 * `acc` has room for 2 * width * 4 sums. */
static void vertical(const uint8_t *src, int width, const Taps *t, int out_h, int row0, int32_t *acc, uint8_t *dst,
                     int simd) {
    int n = width * 4;
    for (int y = 0; y < out_h; y++) {
        const int32_t *k = t->weight + (size_t)y * t->size;
        const uint8_t *rows = src + (size_t)(t->first[y] - row0) * n;
#ifdef HAVE_AVX2_PATH
        if (simd)
            row_avx2(rows, n, k, t->count[y], acc, acc + n);
        else
#endif
        {
            for (int j = 0; j < n; j++) acc[j] = 0;
            for (int r = 0; r < t->count[y]; r++)
                for (int j = 0; j < n; j++) acc[j] += rows[(size_t)r * n + j] * k[r];
        }
        uint8_t *out = dst + (size_t)y * width * 3;
        for (int i = 0; i < width; i++) {
            out[i * 3 + 0] = clip8(HALF + acc[i * 4 + 0]);
            out[i * 3 + 1] = clip8(HALF + acc[i * 4 + 1]);
            out[i * 3 + 2] = clip8(HALF + acc[i * 4 + 2]);
        }
    }
    (void)simd;
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
            acc = malloc(sizeof(int32_t) * out_w * 8);
            if (temp && acc && horizontal(view.buf, width, row0, rows, &across, out_w, temp, simd)) {
                vertical(temp, out_w, &down, out_h, row0, acc, (uint8_t *)PyBytes_AS_STRING(result), simd);
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
    return PyUnicode_FromString(simd_label());
}

static PyMethodDef methods[] = {
    {"resize_rgbx", resize_rgbx, METH_VARARGS,
     "resize_rgbx(pixels, width, height, box, out_width, out_height, bicubic, simd=-1) -> RGB bytes\n\n"
     "Pillow's Image.resize((out_width, out_height), BICUBIC or BILINEAR, box=box) of an RGBX\n"
     "image, horizontal pass first, bit for bit. simd=0 uses the plain C loop (for tests)."},
    {"simd", simd_name, METH_NOARGS, "The SIMD path this CPU gets: 'avx2', 'neon' or 'none'."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_resample", NULL, -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__resample(void) { return PyModule_Create(&module); }
