/* Background meshes: sigma clipping of sorted rows as index ranges, range statistics, and the
 * sparse row product of the separable spline resize (see core/kernels/meshstats.py).
 *
 * Each row of `rows` is one box of the image, sorted ascending with NaN last. astropy's sigma
 * clipping keeps a contiguous range of such a row at every iteration, so an iteration is a
 * median read, one pass for mean and std, and two binary searches. */
#include "ck.h"

static double median_range(const double *a, Py_ssize_t lo, Py_ssize_t hi)
{
    Py_ssize_t n = hi - lo;
    if (n % 2 == 0) return 0.5 * (a[lo + n / 2] + a[lo + n / 2 - 1]);
    return a[lo + (n - 1) / 2];
}

/* one pass about `shift` (the median: no cancellation) */
static void mean_std_shifted(const double *a, Py_ssize_t lo, Py_ssize_t hi, double shift,
                             double *mean, double *std)
{
    double s1 = 0.0, s2 = 0.0;
    Py_ssize_t n = hi - lo;
    for (Py_ssize_t i = lo; i < hi; i++) {
        double d = a[i] - shift;
        s1 += d;
        s2 += d * d;
    }
    double m = s1 / (double)n, v = s2 / (double)n - m * m;
    *mean = shift + m;
    *std = sqrt(v > 0.0 ? v : 0.0);
}

/* two-pass mean and std (the reported statistics) */
static void mean_std_two_pass(const double *a, Py_ssize_t lo, Py_ssize_t hi, double *mean,
                              double *std)
{
    double s = 0.0, v = 0.0;
    Py_ssize_t n = hi - lo;
    for (Py_ssize_t i = lo; i < hi; i++) s += a[i];
    double m = s / (double)n;
    for (Py_ssize_t i = lo; i < hi; i++) {
        double d = a[i] - m;
        v += d * d;
    }
    *mean = m;
    *std = sqrt(v / (double)n);
}

/* median of |a[lo:hi] - med|: the two sorted runs merged outwards from the median */
static double mad_range(const double *a, Py_ssize_t lo, Py_ssize_t hi, double med, double *buf)
{
    Py_ssize_t n = hi - lo, split = lo;
    while (split < hi && a[split] < med) split++;
    Py_ssize_t i = split - 1, j = split;
    for (Py_ssize_t k = 0; k < n; k++) {
        if (i < lo) buf[k] = a[j++] - med;
        else if (j >= hi) buf[k] = med - a[i--];
        else if (med - a[i] <= a[j] - med) buf[k] = med - a[i--];
        else buf[k] = a[j++] - med;
    }
    return median_range(buf, 0, n);
}

static Py_ssize_t search_left(const double *a, Py_ssize_t lo, Py_ssize_t hi, double v)
{
    while (lo < hi) {
        Py_ssize_t mid = lo + (hi - lo) / 2;
        if (a[mid] < v) lo = mid + 1;
        else hi = mid;
    }
    return lo;
}

static Py_ssize_t search_right(const double *a, Py_ssize_t lo, Py_ssize_t hi, double v)
{
    while (lo < hi) {
        Py_ssize_t mid = lo + (hi - lo) / 2;
        if (a[mid] <= v) lo = mid + 1;
        else hi = mid;
    }
    return lo;
}

/* a worker's scratch row of npix doubles (at least one); NULL with *failed set when out of
 * memory */
static double *scratch_row(Py_ssize_t npix, int *failed)
{
    double *buf = (double *)malloc((size_t)(npix > 0 ? npix : 1) * sizeof(double));
    if (!buf) *failed = 1;
    return buf;
}

/* fn over rows [0, nrow) on the kernel threads, GIL released: None, or NULL with MemoryError
 * when a worker could not allocate its scratch row (*failed) */
static PyObject *run_rows(Py_ssize_t nrow, ck_range_fn fn, void *ctx, const int *failed)
{
    Py_BEGIN_ALLOW_THREADS
    ck_parallel_for(nrow, 16, fn, ctx);
    Py_END_ALLOW_THREADS
    if (failed && *failed) return PyErr_NoMemory();
    return Py_NewRef(Py_None);
}

/* the arguments of the range kernels: rows[nrow, npix] (o[0]), lo and hi[nrow] (o[1], o[2])
 * with 0 <= lo <= hi <= npix, and nout writable float64 outputs[nrow] (o[3]...), into b;
 * nonzero with the error set otherwise (`per_row`, `in_range`: the messages) */
static int get_ranges(PyObject **o, ck_buf *b, int nout, const char *per_row,
                      const char *in_range)
{
    if (ck_get(o[0], &b[0], 'd', 0, 2, "rows") || ck_get(o[1], &b[1], 'i', 0, 1, "lo")
        || ck_get(o[2], &b[2], 'i', 0, 1, "hi"))
        return -1;
    for (int k = 0; k < nout; k++)
        if (ck_get(o[3 + k], &b[3 + k], 'd', 1, 1, "out")) return -1;
    Py_ssize_t nrow = CK_SHAPE(b[0], 0), npix = CK_SHAPE(b[0], 1);
    int ok = ck_size(&b[1]) == nrow && ck_size(&b[2]) == nrow;
    for (int k = 0; k < nout; k++) ok = ok && ck_size(&b[3 + k]) == nrow;
    if (ck_check(ok, per_row)) return -1;
    const int64_t *lo = CK_I(b[1]), *hi = CK_I(b[2]);
    for (Py_ssize_t r = 0; r < nrow; r++)
        if (lo[r] < 0 || hi[r] > npix || hi[r] < lo[r]) return ck_check(0, in_range);
    return 0;
}

typedef struct {
    const double *rows;
    Py_ssize_t npix;
    int do_clip, use_median, use_mad, shrink;
    long maxiters;
    double sig_lo, sig_hi;
    int64_t *lo_out, *hi_out;
    int failed;
} clip_ctx;

static void clip_rows(void *vctx, Py_ssize_t r0, Py_ssize_t r1)
{
    clip_ctx *c = (clip_ctx *)vctx;
    double *buf = NULL;
    if (c->use_mad && !(buf = scratch_row(c->npix, &c->failed))) return;
    for (Py_ssize_t r = r0; r < r1; r++) {
        const double *a = c->rows + r * c->npix;
        Py_ssize_t n = c->npix;
        while (n > 0 && isnan(a[n - 1])) n--;
        if (n == 0 || !c->do_clip) {
            c->lo_out[r] = 0;
            c->hi_out[r] = n;
            continue;
        }
        Py_ssize_t lo = 0, hi = n;
        long it = 0;
        double lower = 0.0, upper = 0.0;
        for (;;) {
            double med = median_range(a, lo, hi), mean, std;
            mean_std_shifted(a, lo, hi, med, &mean, &std);
            double cen = c->use_median ? med : mean;
            if (c->use_mad) std = mad_range(a, lo, hi, med, buf) * 1.482602218505602;
            lower = cen - c->sig_lo * std;
            upper = cen + c->sig_hi * std;
            Py_ssize_t nlo = search_left(a, lo, hi, lower);
            Py_ssize_t nhi = search_right(a, nlo, hi, upper);
            if (nhi <= nlo) {
                lo = hi = nlo;
                break;
            }
            if (nhi - nlo == hi - lo) break;
            lo = nlo;
            hi = nhi;
            it++;
            if (c->maxiters >= 0 && it >= c->maxiters) break;
        }
        if (c->shrink) { /* astropy axis=None: what survived every iteration */
            c->lo_out[r] = lo;
            c->hi_out[r] = hi;
        } else { /* astropy with an axis: every valid value inside the last bounds */
            Py_ssize_t flo = search_left(a, 0, n, lower);
            c->lo_out[r] = flo;
            c->hi_out[r] = search_right(a, flo, n, upper);
        }
    }
    free(buf);
}

/* clip_rows(rows[nrow, npix] sorted NaN last, do_clip, use_median, use_mad, maxiters (-1: no
 * limit), sigma_lower, sigma_upper, shrink, lo[nrow], hi[nrow]) */
PyObject *ck_clip_rows(PyObject *self, PyObject *args)
{
    PyObject *o[3];
    ck_buf b[3] = {{{0}}};
    PyObject *ret = NULL;
    clip_ctx c = {0};
    if (!PyArg_ParseTuple(args, "OppplddpOO", &o[0], &c.do_clip, &c.use_median, &c.use_mad,
                          &c.maxiters, &c.sig_lo, &c.sig_hi, &c.shrink, &o[1], &o[2]))
        return NULL;
    if (ck_get(o[0], &b[0], 'd', 0, 2, "rows") || ck_get(o[1], &b[1], 'i', 1, 1, "lo")
        || ck_get(o[2], &b[2], 'i', 1, 1, "hi"))
        goto done;
    Py_ssize_t nrow = CK_SHAPE(b[0], 0);
    if (ck_check(ck_size(&b[1]) == nrow && ck_size(&b[2]) == nrow, "clip_rows: lo/hi per row"))
        goto done;
    c.rows = CK_D(b[0]);
    c.npix = CK_SHAPE(b[0], 1);
    c.lo_out = CK_I(b[1]);
    c.hi_out = CK_I(b[2]);
    ret = run_rows(nrow, clip_rows, &c, &c.failed);
done:
    ck_release(b, 3);
    return ret;
}

typedef struct {
    const double *rows;
    const int64_t *lo, *hi;
    Py_ssize_t npix;
    int mad;
    double *a, *b, *c; /* median, mean, std -- or the MAD in a */
    int failed;
} stats_ctx;

static void range_stats(void *vctx, Py_ssize_t r0, Py_ssize_t r1)
{
    stats_ctx *c = (stats_ctx *)vctx;
    double *buf = NULL;
    if (c->mad && !(buf = scratch_row(c->npix, &c->failed))) return;
    for (Py_ssize_t r = r0; r < r1; r++) {
        const double *a = c->rows + r * c->npix;
        Py_ssize_t lo = c->lo[r], hi = c->hi[r];
        if (hi <= lo) {
            c->a[r] = NAN;
            if (!c->mad) c->b[r] = c->c[r] = NAN;
            continue;
        }
        double med = median_range(a, lo, hi);
        if (c->mad) {
            c->a[r] = mad_range(a, lo, hi, med, buf);
        } else {
            c->a[r] = med;
            mean_std_two_pass(a, lo, hi, &c->b[r], &c->c[r]);
        }
    }
    free(buf);
}

static PyObject *stats_call(PyObject *args, int mad)
{
    PyObject *o[6];
    ck_buf b[6] = {{{0}}};
    PyObject *ret = NULL;
    int nout = mad ? 1 : 3;
    if (mad ? !PyArg_ParseTuple(args, "OOOO", &o[0], &o[1], &o[2], &o[3])
            : !PyArg_ParseTuple(args, "OOOOOO", &o[0], &o[1], &o[2], &o[3], &o[4], &o[5]))
        return NULL;
    if (get_ranges(o, b, nout, "range statistics: one value per row",
                   "range statistics: 0 <= lo, hi <= npix"))
        goto done;
    stats_ctx c = {CK_D(b[0]), CK_I(b[1]), CK_I(b[2]), CK_SHAPE(b[0], 1), mad, CK_D(b[3]),
                   mad ? NULL : CK_D(b[4]), mad ? NULL : CK_D(b[5]), 0};
    ret = run_rows(CK_SHAPE(b[0], 0), range_stats, &c, &c.failed);
done:
    ck_release(b, 3 + nout);
    return ret;
}

/* range_stats(rows, lo, hi, median, mean, std) */
PyObject *ck_range_stats(PyObject *self, PyObject *args) { return stats_call(args, 0); }

/* range_mad(rows, lo, hi, mad) */
PyObject *ck_range_mad(PyObject *self, PyObject *args) { return stats_call(args, 1); }

typedef struct {
    const int64_t *indptr, *indices;
    const double *w, *cols;
    Py_ssize_t nx;
    double lo, hi;
    double *out;
} sparse_ctx;

static void sparse_rows(void *vctx, Py_ssize_t r0, Py_ssize_t r1)
{
    sparse_ctx *c = (sparse_ctx *)vctx;
    Py_ssize_t nx = c->nx;
    for (Py_ssize_t i = r0; i < r1; i++) {
        double *row = c->out + i * nx;
        for (Py_ssize_t j = 0; j < nx; j++) row[j] = 0.0;
        for (int64_t k = c->indptr[i]; k < c->indptr[i + 1]; k++) {
            double w = c->w[k];
            const double *src = c->cols + c->indices[k] * nx;
            for (Py_ssize_t j = 0; j < nx; j++) row[j] += w * src[j];
        }
        for (Py_ssize_t j = 0; j < nx; j++) {
            if (row[j] < c->lo) row[j] = c->lo;
            else if (row[j] > c->hi) row[j] = c->hi;
        }
    }
}

/* sparse_rows(indptr[ny+1], indices[nnz], weights[nnz], cols[m, nx], lo, hi, out[ny, nx]):
 * out[i] = clip(sum_k weights[k] cols[indices[k]], lo, hi) over row i's CSR entries */
PyObject *ck_sparse_rows(PyObject *self, PyObject *args)
{
    PyObject *o[5];
    ck_buf b[5] = {{{0}}};
    PyObject *ret = NULL;
    sparse_ctx c = {0};
    if (!PyArg_ParseTuple(args, "OOOOddO", &o[0], &o[1], &o[2], &o[3], &c.lo, &c.hi, &o[4]))
        return NULL;
    if (ck_get(o[0], &b[0], 'i', 0, 1, "indptr") || ck_get(o[1], &b[1], 'i', 0, 1, "indices")
        || ck_get(o[2], &b[2], 'd', 0, 1, "weights") || ck_get(o[3], &b[3], 'd', 0, 2, "cols")
        || ck_get(o[4], &b[4], 'd', 1, 2, "out"))
        goto done;
    Py_ssize_t ny = CK_SHAPE(b[4], 0), m = CK_SHAPE(b[3], 0);
    c.nx = CK_SHAPE(b[4], 1);
    Py_ssize_t nnz = ck_size(&b[1]);
    if (ck_check(ck_size(&b[0]) == ny + 1 && ck_size(&b[2]) == nnz && CK_SHAPE(b[3], 1) == c.nx,
                 "sparse_rows: CSR and array shapes"))
        goto done;
    c.indptr = CK_I(b[0]);
    c.indices = CK_I(b[1]);
    for (Py_ssize_t i = 0; i < ny; i++) {
        if (c.indptr[i] < 0 || c.indptr[i + 1] < c.indptr[i] || c.indptr[i + 1] > nnz) {
            ck_check(0, "sparse_rows: indptr increasing within [0, nnz]");
            goto done;
        }
    }
    for (Py_ssize_t k = 0; k < nnz; k++) {
        if (c.indices[k] < 0 || c.indices[k] >= m) {
            ck_check(0, "sparse_rows: column indices in range");
            goto done;
        }
    }
    c.w = CK_D(b[2]);
    c.cols = CK_D(b[3]);
    c.out = CK_D(b[4]);
    ret = run_rows(ny, sparse_rows, &c, NULL);
done:
    ck_release(b, 5);
    return ret;
}

typedef struct {
    const double *rows;
    const int64_t *lo, *hi;
    Py_ssize_t npix;
    double c, M; /* M NaN: the median of the range */
    int scale;
    double *out;
    int failed;
} biweight_ctx;

static void range_biweight(void *vctx, Py_ssize_t r0, Py_ssize_t r1)
{
    biweight_ctx *c = (biweight_ctx *)vctx;
    double *buf = scratch_row(c->npix, &c->failed);
    if (!buf) return;
    for (Py_ssize_t r = r0; r < r1; r++) {
        const double *a = c->rows + r * c->npix;
        Py_ssize_t lo = c->lo[r], hi = c->hi[r];
        if (hi <= lo) {
            c->out[r] = NAN;
            continue;
        }
        double med = median_range(a, lo, hi);
        double M = isnan(c->M) ? med : c->M;
        double mad = mad_range(a, lo, hi, med, buf); /* about the median, as astropy */
        if (mad == 0.0) {
            c->out[r] = c->scale ? 0.0 : M;
            continue;
        }
        double cm = c->c * mad, s1 = 0.0, s2 = 0.0;
        for (Py_ssize_t i = lo; i < hi; i++) {
            double d = a[i] - M, u = d / cm;
            if (fabs(u) >= 1.0) continue;
            double u2 = u * u, w = 1.0 - u2;
            if (c->scale) {
                double w2 = w * w;
                s1 += d * d * w2 * w2;
                s2 += w * (1.0 - 5.0 * u2);
            } else {
                s1 += d * w * w;
                s2 += w * w;
            }
        }
        if (c->scale) c->out[r] = sqrt((double)(hi - lo) * s1 / (s2 * s2));
        else c->out[r] = M + s1 / s2;
    }
    free(buf);
}

/* range_biweight(rows, lo, hi, c, M (NaN: median), scale (0 location, 1 scale), out[nrow]):
 * astropy's biweight_location / biweight_scale (modify_sample_size=False) of each range */
PyObject *ck_range_biweight(PyObject *self, PyObject *args)
{
    PyObject *o[4];
    ck_buf b[4] = {{{0}}};
    PyObject *ret = NULL;
    biweight_ctx c = {0};
    if (!PyArg_ParseTuple(args, "OOOddpO", &o[0], &o[1], &o[2], &c.c, &c.M, &c.scale, &o[3]))
        return NULL;
    if (get_ranges(o, b, 1, "range_biweight: one value per row",
                   "range_biweight: 0 <= lo <= hi <= npix"))
        goto done;
    c.rows = CK_D(b[0]);
    c.lo = CK_I(b[1]);
    c.hi = CK_I(b[2]);
    c.npix = CK_SHAPE(b[0], 1);
    c.out = CK_D(b[3]);
    ret = run_rows(CK_SHAPE(b[0], 0), range_biweight, &c, &c.failed);
done:
    ck_release(b, 4);
    return ret;
}
