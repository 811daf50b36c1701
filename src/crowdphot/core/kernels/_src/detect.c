/* Star-finder kernels: zero-padded convolution (mirror-symmetric or general) and peak search. */
#include "ck.h"

/* -- convolution ------------------------------------------------------------------------- */
typedef struct {
    const double *data, *wq;
    double *out, *seg_max;
    Py_ssize_t ny, nx, ry, rx, seg, nseg;
} sym_ctx;

/* wq[i, j] weighs offsets (+-i, +-j): the mirrored rows are summed first (half the
 * multiply-adds) and each output row's maximum per `seg`-pixel run is recorded so that the peak
 * search can skip runs that never reach the threshold (NaN ignored: the skip stays safe). */
static void sym_rows(void *vctx, Py_ssize_t lo, Py_ssize_t hi)
{
    sym_ctx *c = (sym_ctx *)vctx;
    Py_ssize_t ny = c->ny, nx = c->nx, rx = c->rx;
    double *v = calloc((size_t)(nx + 2 * rx), sizeof(double)); /* zero margins: 0 outside */
    if (!v) { /* out of memory: NaN rows rather than garbage */
        for (Py_ssize_t q = lo * nx; q < hi * nx; q++) c->out[q] = NAN;
        for (Py_ssize_t q = lo * c->nseg; q < hi * c->nseg; q++) c->seg_max[q] = NAN;
        return;
    }
    double *vin = v + rx;
    for (Py_ssize_t y = lo; y < hi; y++) {
        double *acc = c->out + y * nx;
        for (Py_ssize_t x = 0; x < nx; x++) acc[x] = 0.0;
        for (Py_ssize_t i = 0; i <= c->ry; i++) {
            Py_ssize_t a = y - i, b = y + i;
            if (i == 0) {
                memcpy(vin, c->data + y * nx, (size_t)nx * sizeof(double));
            } else if (a >= 0 && b < ny) {
                const double *ra = c->data + a * nx, *rb = c->data + b * nx;
                for (Py_ssize_t x = 0; x < nx; x++) vin[x] = ra[x] + rb[x];
            } else if (a >= 0) {
                memcpy(vin, c->data + a * nx, (size_t)nx * sizeof(double));
            } else if (b < ny) {
                memcpy(vin, c->data + b * nx, (size_t)nx * sizeof(double));
            } else {
                continue;
            }
            const double *wrow = c->wq + i * (rx + 1);
            double w0 = wrow[0];
            if (w0 != 0.0)
                for (Py_ssize_t x = 0; x < nx; x++) acc[x] += w0 * vin[x];
            for (Py_ssize_t j = 1; j <= rx; j++) {
                double wt = wrow[j];
                if (wt == 0.0) continue;
                const double *l = v + rx - j, *h = v + rx + j;
                for (Py_ssize_t x = 0; x < nx; x++) acc[x] += wt * (l[x] + h[x]);
            }
        }
        for (Py_ssize_t s = 0; s < c->nseg; s++) {
            Py_ssize_t x1 = (s + 1) * c->seg < nx ? (s + 1) * c->seg : nx;
            double m = -INFINITY;
            for (Py_ssize_t x = s * c->seg; x < x1; x++)
                if (acc[x] > m) m = acc[x];
            c->seg_max[y * c->nseg + s] = m;
        }
    }
    free(v);
}

/* convolve_symmetric(data[ny, nx], wq[ry + 1, rx + 1], seg, out[ny, nx], seg_max[ny, nseg]) */
PyObject *ck_convolve_symmetric(PyObject *self, PyObject *args)
{
    PyObject *o[4];
    Py_ssize_t seg;
    ck_buf b[4] = {{{0}}};
    PyObject *ret = NULL;
    if (!PyArg_ParseTuple(args, "OOnOO", &o[0], &o[1], &seg, &o[2], &o[3])) return NULL;
    if (ck_get(o[0], &b[0], 'd', 0, 2, "data") || ck_get(o[1], &b[1], 'd', 0, 2, "wq")
        || ck_get(o[2], &b[2], 'd', 1, 2, "out") || ck_get(o[3], &b[3], 'd', 1, 2, "seg_max"))
        goto done;
    sym_ctx c;
    c.ny = CK_SHAPE(b[0], 0);
    c.nx = CK_SHAPE(b[0], 1);
    c.ry = CK_SHAPE(b[1], 0) - 1;
    c.rx = CK_SHAPE(b[1], 1) - 1;
    c.seg = seg;
    c.nseg = seg > 0 ? (c.nx + seg - 1) / seg : 0;
    if (ck_check(seg > 0 && c.ry >= 0 && c.rx >= 0 && CK_SHAPE(b[2], 0) == c.ny
                     && CK_SHAPE(b[2], 1) == c.nx && CK_SHAPE(b[3], 0) == c.ny
                     && CK_SHAPE(b[3], 1) == c.nseg, "convolve_symmetric: shapes"))
        goto done;
    c.data = CK_D(b[0]);
    c.wq = CK_D(b[1]);
    c.out = CK_D(b[2]);
    c.seg_max = CK_D(b[3]);
    Py_BEGIN_ALLOW_THREADS
    ck_parallel_for(c.ny, 8, sym_rows, &c);
    Py_END_ALLOW_THREADS
    ret = Py_NewRef(Py_None);
done:
    ck_release(b, 4);
    return ret;
}

typedef struct {
    const double *data, *w;
    const int64_t *oy, *ox;
    double *out;
    Py_ssize_t ny, nx, nt;
} taps_ctx;

static void taps_rows(void *vctx, Py_ssize_t lo, Py_ssize_t hi)
{
    taps_ctx *c = (taps_ctx *)vctx;
    Py_ssize_t ny = c->ny, nx = c->nx;
    for (Py_ssize_t y = lo; y < hi; y++) {
        double *acc = c->out + y * nx;
        for (Py_ssize_t x = 0; x < nx; x++) acc[x] = 0.0;
        for (Py_ssize_t t = 0; t < c->nt; t++) {
            Py_ssize_t ys = y + c->oy[t], ox = c->ox[t];
            if (ys < 0 || ys >= ny) continue;
            Py_ssize_t x0 = ox < 0 ? -ox : 0, x1 = nx - ox < nx ? nx - ox : nx;
            const double *src = c->data + ys * nx + ox;
            double wt = c->w[t];
            for (Py_ssize_t x = x0; x < x1; x++) acc[x] += wt * src[x];
        }
    }
}

/* convolve_taps(data[ny, nx], oy[t], ox[t], w[t], out[ny, nx]):
 * out[y, x] = sum_t w[t] data[y + oy[t], x + ox[t]] (0 outside). */
PyObject *ck_convolve_taps(PyObject *self, PyObject *args)
{
    PyObject *o[5];
    ck_buf b[5] = {{{0}}};
    PyObject *ret = NULL;
    if (!PyArg_ParseTuple(args, "OOOOO", &o[0], &o[1], &o[2], &o[3], &o[4])) return NULL;
    if (ck_get(o[0], &b[0], 'd', 0, 2, "data") || ck_get(o[1], &b[1], 'i', 0, 1, "oy")
        || ck_get(o[2], &b[2], 'i', 0, 1, "ox") || ck_get(o[3], &b[3], 'd', 0, 1, "w")
        || ck_get(o[4], &b[4], 'd', 1, 2, "out"))
        goto done;
    taps_ctx c;
    c.ny = CK_SHAPE(b[0], 0);
    c.nx = CK_SHAPE(b[0], 1);
    c.nt = ck_size(&b[3]);
    if (ck_check(ck_size(&b[1]) == c.nt && ck_size(&b[2]) == c.nt && CK_SHAPE(b[4], 0) == c.ny
                     && CK_SHAPE(b[4], 1) == c.nx, "convolve_taps: shapes"))
        goto done;
    c.data = CK_D(b[0]);
    c.oy = CK_I(b[1]);
    c.ox = CK_I(b[2]);
    c.w = CK_D(b[3]);
    c.out = CK_D(b[4]);
    Py_BEGIN_ALLOW_THREADS
    ck_parallel_for(c.ny, 8, taps_rows, &c);
    Py_END_ALLOW_THREADS
    ret = Py_NewRef(Py_None);
done:
    ck_release(b, 5);
    return ret;
}

/* -- peaks ------------------------------------------------------------------------------- */
typedef struct {
    const double *conv;
    Py_ssize_t ny, nx;
} img;

#define AT(im, yy, xx) ((im)->conv[(yy) * (im)->nx + (xx)])

/* no pixel of [y0, y1) x [x0, x1) exceeds v; outside pixels count as 0 */
static int none_greater(const img *im, double v, Py_ssize_t y0, Py_ssize_t y1, Py_ssize_t x0,
                        Py_ssize_t x1)
{
    if ((y0 < 0 || x0 < 0 || y1 > im->ny || x1 > im->nx) && 0.0 > v) return 0;
    Py_ssize_t ya = y0 > 0 ? y0 : 0, yb = y1 < im->ny ? y1 : im->ny;
    Py_ssize_t xa = x0 > 0 ? x0 : 0, xb = x1 < im->nx ? x1 : im->nx;
    for (Py_ssize_t yy = ya; yy < yb; yy++)
        for (Py_ssize_t xx = xa; xx < xb; xx++)
            if (AT(im, yy, xx) > v) return 0;
    return 1;
}

/* v equals the maximum over the centred footprint (outside pixels count as 0) */
static int footprint_peak(const img *im, Py_ssize_t y, Py_ssize_t x, double v,
                          const unsigned char *foot, Py_ssize_t fy, Py_ssize_t fx)
{
    for (Py_ssize_t j = 0; j < fy; j++) {
        Py_ssize_t yy = y + j - fy / 2;
        for (Py_ssize_t k = 0; k < fx; k++) {
            if (!foot[j * fx + k]) continue;
            Py_ssize_t xx = x + k - fx / 2;
            if (yy >= 0 && yy < im->ny && xx >= 0 && xx < im->nx) {
                if (AT(im, yy, xx) > v) return 0;
            } else if (0.0 > v) {
                return 0;
            }
        }
    }
    return 1;
}

/* photutils' circular test: maximum of the circumscribed box, or maximum of the inscribed box
 * and of the circle (plus the zero padding when the box leaves the image) */
static int circle_peak(const img *im, Py_ssize_t y, Py_ssize_t x, double v,
                       const unsigned char *foot, Py_ssize_t fs, Py_ssize_t half,
                       Py_ssize_t hins, int insc_inside)
{
    if (insc_inside && !none_greater(im, v, y - 1, y + 2, x - 1, x + 2)) return 0;
    int insc_ok = none_greater(im, v, y - hins, y + hins + 1, x - hins, x + hins + 1);
    if (insc_inside && !insc_ok) return 0;
    if (none_greater(im, v, y - half, y - half + fs, x - half, x - half + fs)) return 1;
    if (!insc_ok) return 0;
    double vmax = -INFINITY;
    for (Py_ssize_t j = 0; j < fs; j++) {
        Py_ssize_t yy = y + j - half;
        if (yy < 0 || yy >= im->ny) continue;
        for (Py_ssize_t k = 0; k < fs; k++) {
            Py_ssize_t xx = x + k - half;
            if (foot[j * fs + k] && xx >= 0 && xx < im->nx) {
                double a = AT(im, yy, xx);
                if (a > vmax) vmax = a; /* Python's max(vmax, a) */
            }
        }
    }
    if (y < half || x < half || y - half + fs > im->ny || x - half + fs > im->nx)
        if (0.0 > vmax) vmax = 0.0;
    return v == vmax;
}

/* find_peaks(conv[ny, nx], thr[ny, nx] or [1, 1], mask[ny, nx] or [1, 1], use_mask, by, bx,
 *            foot[fy, fx], circle_mode, fs, half, insc, seg_max[ny, nseg] or [0, 0], seg)
 * -> bytes of int64 (y, x) pairs in row-major order. */
PyObject *ck_find_peaks(PyObject *self, PyObject *args)
{
    PyObject *o[5];
    int use_mask, circle_mode;
    Py_ssize_t by, bx, fs, half, insc, seg;
    ck_buf b[5] = {{{0}}};
    PyObject *ret = NULL;
    int64_t *pk = NULL;
    if (!PyArg_ParseTuple(args, "OOOpnnOpnnnOn", &o[0], &o[1], &o[2], &use_mask, &by, &bx,
                          &o[3], &circle_mode, &fs, &half, &insc, &o[4], &seg))
        return NULL;
    if (ck_get(o[0], &b[0], 'd', 0, 2, "conv") || ck_get(o[1], &b[1], 'd', 0, 2, "thr")
        || ck_get(o[2], &b[2], 'b', 0, 2, "mask") || ck_get(o[3], &b[3], 'b', 0, 2, "foot")
        || ck_get(o[4], &b[4], 'd', 0, 2, "seg_max"))
        goto done;
    img im = {CK_D(b[0]), CK_SHAPE(b[0], 0), CK_SHAPE(b[0], 1)};
    Py_ssize_t ny = im.ny, nx = im.nx;
    int thr_scalar = ck_size(&b[1]) == 1;
    Py_ssize_t fy = CK_SHAPE(b[3], 0), fx = CK_SHAPE(b[3], 1);
    Py_ssize_t nseg = seg > 0 ? (nx + seg - 1) / seg : 0;
    int use_seg = thr_scalar && CK_SHAPE(b[4], 0) == ny && ny > 0;
    if (ck_check(seg > 0 && (thr_scalar || (CK_SHAPE(b[1], 0) == ny && CK_SHAPE(b[1], 1) == nx))
                     && (!use_mask || (CK_SHAPE(b[2], 0) == ny && CK_SHAPE(b[2], 1) == nx))
                     && (!use_seg || CK_SHAPE(b[4], 1) == nseg)
                     && (!circle_mode || (fy == fs && fx == fs && half >= 0 && half < fs)),
                 "find_peaks: shapes"))
        goto done;
    const double *thr = CK_D(b[1]);
    const unsigned char *mask = CK_B(b[2]), *foot = CK_B(b[3]);
    const double *seg_max = CK_D(b[4]);
    Py_ssize_t hins = insc / 2;
    int insc_inside = hins <= half && hins <= fs - 1 - half;
    Py_ssize_t cap = 1024, n = 0;
    int oom = 0;
    pk = malloc((size_t)cap * 2 * sizeof(int64_t));
    if (!pk) {
        PyErr_NoMemory();
        goto done;
    }
    Py_BEGIN_ALLOW_THREADS
    double t = thr[0];
    for (Py_ssize_t y = by; y < ny - by && !oom; y++) {
        for (Py_ssize_t s = 0; s < nseg && !oom; s++) {
            if (use_seg && !(seg_max[y * nseg + s] > t)) continue;
            Py_ssize_t xa = s * seg > bx ? s * seg : bx;
            Py_ssize_t xb = (s + 1) * seg < nx - bx ? (s + 1) * seg : nx - bx;
            for (Py_ssize_t x = xa; x < xb; x++) {
                double v = AT(&im, y, x);
                if (!thr_scalar) t = thr[y * nx + x];
                if (!(v > t) || (use_mask && mask[y * nx + x])) continue;
                int ok = circle_mode ? circle_peak(&im, y, x, v, foot, fs, half, hins, insc_inside)
                                     : footprint_peak(&im, y, x, v, foot, fy, fx);
                if (!ok) continue;
                if (n == cap) {
                    int64_t *grown = realloc(pk, (size_t)cap * 4 * sizeof(int64_t));
                    if (!grown) {
                        oom = 1;
                        break;
                    }
                    pk = grown;
                    cap *= 2;
                }
                pk[2 * n] = y;
                pk[2 * n + 1] = x;
                n++;
            }
        }
    }
    Py_END_ALLOW_THREADS
    if (oom) {
        PyErr_NoMemory();
        goto done;
    }
    ret = PyBytes_FromStringAndSize((const char *)pk, (Py_ssize_t)(n * 2 * sizeof(int64_t)));
done:
    free(pk);
    ck_release(b, 5);
    return ret;
}
