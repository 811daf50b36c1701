/* Exact / centre / sub-pixel overlap of circles and annuli with the pixel grid.
 *
 * The arithmetic follows photutils' operation for operation (bounding boxes, grid edges, the
 * "well inside / near the edge" classification), so that in/out decisions on sample points that
 * lie exactly on a circle agree. The exact area of a pixel inside a disc is a trapezoid plus a
 * circular segment per quadrant piece (see core/kernels/overlap.py for the geometry). */
#include "ck.h"

/* theta - sin(theta) = 4 s^3 sum_k C(2k, k) / 4^k s^(2k) / (2k + 3), s = sin(theta / 2) */
static double seg_coeffs[10];
static int seg_ready = 0;

static void init_seg(void)
{
    if (seg_ready) return;
    for (int k = 0; k < 10; k++) {
        double comb = 1.0; /* C(2k, k), exact in double for k < 10 */
        for (int i = 1; i <= k; i++) comb = comb * (k + i) / i;
        seg_coeffs[k] = comb / ldexp(1.0, 2 * k) / (2.0 * k + 3.0);
    }
    seg_ready = 1;
}

static inline double chord(double x, double r)
{
    double v = (r - x) * (r + x);
    return v > 0.0 ? sqrt(v) : 0.0;
}

static double under_arc(double u, double v, double r)
{
    double hu = chord(u, r), hv = chord(v, r);
    double hsum = hu + hv;
    double dh = hsum > 0.0 ? (u - v) * (u + v) / hsum : 0.0;
    double half = 0.5 * sqrt((v - u) * (v - u) + dh * dh) / r; /* sin(theta / 2) */
    double excess;
    if (half < 0.125) {
        double s2 = half * half, acc = seg_coeffs[9];
        for (int k = 8; k >= 0; k--) acc = acc * s2 + seg_coeffs[k];
        excess = 4.0 * half * s2 * acc;
    } else {
        double theta = 2.0 * asin(half < 1.0 ? half : 1.0);
        excess = theta - sin(theta);
    }
    return 0.5 * (v - u) * hsum + 0.5 * r * r * excess;
}

static inline double dmin(double a, double b) { return a < b ? a : b; }
static inline double dmax(double a, double b) { return a > b ? a : b; }

static double quadrant_area(double a, double b, double c, double d, double r)
{
    a = dmin(a, r);
    b = dmin(b, r);
    double td = dmin(dmax(chord(d, r), a), b);
    double tc = dmin(dmax(chord(c, r), a), b);
    return c * (td - tc) + (d - c) * (td - a) + under_arc(td, tc, r);
}

static double rect_area(double x0, double x1, double y0, double y1, double r)
{
    double xa = x1 <= 0.0 ? -x1 : dmax(x0, 0.0), xb = x1 <= 0.0 ? -x0 : x1;
    double ya = y1 <= 0.0 ? -y1 : dmax(y0, 0.0), yb = y1 <= 0.0 ? -y0 : y1;
    double area = quadrant_area(xa, xb, ya, yb, r);
    double ex = (x0 < 0.0 && x1 > 0.0) ? -x0 : 0.0;
    double ey = (y0 < 0.0 && y1 > 0.0) ? -y0 : 0.0;
    if (ex > 0.0) area += quadrant_area(0.0, ex, ya, yb, r);
    if (ey > 0.0) area += quadrant_area(xa, xb, 0.0, ey, r);
    if (ex > 0.0 && ey > 0.0) area += quadrant_area(0.0, ex, 0.0, ey, r);
    return area;
}

static double disc_pixel(double pxmin, double pymin, double dx, double dy, double radius,
                         double pixel_radius, int method, int nsub)
{
    double pxmax = pxmin + dx, pymax = pymin + dy;
    if (!(pxmax > -radius - 0.5 * dx && pxmin < radius + 0.5 * dx && pymax > -radius - 0.5 * dy
          && pymin < radius + 0.5 * dy))
        return 0.0;
    double pxcen = pxmin + dx * 0.5, pycen = pymin + dy * 0.5;
    double dist = sqrt(pxcen * pxcen + pycen * pycen);
    if (dist < radius - pixel_radius) return 1.0;
    if (!(dist < radius + pixel_radius)) return 0.0;
    if (method == 0) return rect_area(pxmin, pxmax, pymin, pymax, radius) / (dx * dy);
    double sdx = (pxmax - pxmin) / nsub, sdy = (pymax - pymin) / nsub, r2 = radius * radius;
    long hits = 0;
    double xs = pxmin - 0.5 * sdx;
    for (int a = 0; a < nsub; a++) {
        xs += sdx;
        double ys = pymin - 0.5 * sdy;
        for (int b = 0; b < nsub; b++) {
            ys += sdy;
            if (xs * xs + ys * ys < r2) hits++;
        }
    }
    return (double)hits / (double)(nsub * nsub);
}

/* half-width of the chord at height yc (-1 when the row misses the circle) */
static inline double half_width(double radius, double yc)
{
    double q = radius * radius - yc * yc;
    return (radius > 0.0 && q > 0.0) ? sqrt(q) : -1.0;
}

typedef struct {
    int64_t ixmin, iymin, nx, ny;
    double xmin_e, ymin_e, dx, dy;
} grid;

static grid source_grid(double xk, double yk, double r)
{
    grid g;
    double ixmin = floor((xk - r) + 0.5), ixmax = ceil((xk + r) + 0.5);
    double iymin = floor((yk - r) + 0.5), iymax = ceil((yk + r) + 0.5);
    g.ixmin = (int64_t)ixmin;
    g.iymin = (int64_t)iymin;
    g.nx = (int64_t)(ixmax - ixmin);
    g.ny = (int64_t)(iymax - iymin);
    g.xmin_e = ((double)g.ixmin - 0.5) - xk;
    g.ymin_e = ((double)g.iymin - 0.5) - yk;
    g.dx = ((((double)(g.ixmin + g.nx) - 0.5) - xk) - g.xmin_e) / (double)g.nx;
    g.dy = ((((double)(g.iymin + g.ny) - 0.5) - yk) - g.ymin_e) / (double)g.ny;
    return g;
}

typedef struct {
    double far_out, in_out, far_in, in_in;
} bounds;

/* per-row |x| thresholds that decide most pixels without the per-pixel test; a conservative
 * margin leaves the uncertain ones to disc_pixel */
static bounds row_bounds(double pycen, double r, double r_in, double pixel_radius)
{
    double tol = 1e-9 * (r + 1.0);
    bounds b = {half_width(r + pixel_radius, pycen) + tol, half_width(r - pixel_radius, pycen) - tol,
                half_width(r_in + pixel_radius, pycen) + tol,
                half_width(r_in - pixel_radius, pycen) - tol};
    return b;
}

/* column indices [lo, hi) whose centres satisfy |x| < half, widened (grow 1) or narrowed
 * (grow -1) by a pixel per side so that rounding cannot misplace a pixel */
static void index_range(double half, double xmin_e, double dx, int grow, int64_t *lo, int64_t *hi)
{
    if (half <= 0.0) {
        *lo = *hi = 0;
        return;
    }
    *lo = (int64_t)floor((-half - xmin_e) / dx - 0.5) + 1 - grow;
    *hi = (int64_t)ceil((half - xmin_e) / dx - 0.5) + grow;
}

static double pixel_weight(double pxmin, double pymin, double dx, double dy, double r,
                           double r_in, double pixel_radius, const bounds *b, int method,
                           int nsub)
{
    double ax = fabs(pxmin + dx * 0.5);
    int annulus = r_in > 0.0;
    if (ax >= b->far_out || (annulus && ax < b->in_in)) return 0.0;
    double w = ax < b->in_out ? 1.0
                              : disc_pixel(pxmin, pymin, dx, dy, r, pixel_radius, method, nsub);
    if (annulus && ax < b->far_in && w > 0.0)
        w -= disc_pixel(pxmin, pymin, dx, dy, r_in, pixel_radius, method, nsub);
    return w;
}

static inline int64_t imax(int64_t a, int64_t b) { return a > b ? a : b; }

/* centres whose box cannot be represented (NaN, inf, beyond 1e15) touch no pixel */
static inline int usable(double x, double y, double r)
{
    return fabs(x) < 1e15 && fabs(y) < 1e15 && r < 1e9;
}
static inline int64_t imin(int64_t a, int64_t b) { return a < b ? a : b; }

/* -- weights on stamps ------------------------------------------------------------------- */
typedef struct {
    const double *x, *y;
    double r, r_in, *out;
    int method, nsub;
    Py_ssize_t ky, kx;
} stamps_ctx;

static void stamps_range(void *vctx, Py_ssize_t lo, Py_ssize_t hi)
{
    stamps_ctx *c = (stamps_ctx *)vctx;
    for (Py_ssize_t k = lo; k < hi; k++) {
        if (!usable(c->x[k], c->y[k], c->r)) continue;
        grid g = source_grid(c->x[k], c->y[k], c->r);
        double pixel_radius = 0.5 * sqrt(g.dx * g.dx + g.dy * g.dy);
        double *o = c->out + k * c->ky * c->kx;
        int64_t ny = imin(g.ny, c->ky), nx = imin(g.nx, c->kx);
        for (int64_t j = 0; j < ny; j++) {
            double pymin = g.ymin_e + j * g.dy;
            bounds b = row_bounds(pymin + g.dy * 0.5, c->r, c->r_in, pixel_radius);
            for (int64_t i = 0; i < nx; i++)
                o[j * c->kx + i] = pixel_weight(g.xmin_e + i * g.dx, pymin, g.dx, g.dy, c->r,
                                                c->r_in, pixel_radius, &b, c->method, c->nsub);
        }
    }
}

/* circle_stamps(x[n], y[n], r, r_in (< 0: none), method (0 exact, 1 center, 2 subpixel),
 *               nsub, out[n, ky, kx]): weights of each source's own box (rest untouched) */
PyObject *ck_circle_stamps(PyObject *self, PyObject *args)
{
    PyObject *o[3];
    stamps_ctx c;
    ck_buf b[3] = {{{0}}};
    PyObject *ret = NULL;
    if (!PyArg_ParseTuple(args, "OOddiiO", &o[0], &o[1], &c.r, &c.r_in, &c.method, &c.nsub,
                          &o[2]))
        return NULL;
    if (ck_get(o[0], &b[0], 'd', 0, 1, "x") || ck_get(o[1], &b[1], 'd', 0, 1, "y")
        || ck_get(o[2], &b[2], 'd', 1, 3, "out"))
        goto done;
    Py_ssize_t n = ck_size(&b[0]);
    if (ck_check(ck_size(&b[1]) == n && CK_SHAPE(b[2], 0) == n && c.nsub >= 1
                     && c.method >= 0 && c.method <= 2, "circle_stamps: shapes"))
        goto done;
    init_seg();
    c.x = CK_D(b[0]);
    c.y = CK_D(b[1]);
    c.out = CK_D(b[2]);
    c.ky = CK_SHAPE(b[2], 1);
    c.kx = CK_SHAPE(b[2], 2);
    Py_BEGIN_ALLOW_THREADS
    ck_parallel_for(n, 64, stamps_range, &c);
    Py_END_ALLOW_THREADS
    ret = Py_NewRef(Py_None);
done:
    ck_release(b, 3);
    return ret;
}

/* -- sums without stamps ----------------------------------------------------------------- */
typedef struct {
    const double *data, *error, *x, *y;
    const unsigned char *excluded;
    int use_mask, use_err, method, nsub;
    Py_ssize_t ny, nx;
    double r, r_in, *sums, *errs;
    int64_t nonfinite;
} sums_ctx;

static void sums_range(void *vctx, Py_ssize_t lo, Py_ssize_t hi)
{
    sums_ctx *c = (sums_ctx *)vctx;
    int64_t nonfinite = 0;
    for (Py_ssize_t k = lo; k < hi; k++) {
        if (!usable(c->x[k], c->y[k], c->r)) {
            c->sums[k] = NAN;
            c->errs[k] = NAN;
            continue;
        }
        grid g = source_grid(c->x[k], c->y[k], c->r);
        if (g.ixmin >= c->nx || g.iymin >= c->ny || g.ixmin + g.nx <= 0 || g.iymin + g.ny <= 0) {
            c->sums[k] = NAN;
            c->errs[k] = NAN;
            continue;
        }
        double pixel_radius = 0.5 * sqrt(g.dx * g.dx + g.dy * g.dy);
        double total = 0.0, var = 0.0;
        for (int64_t j = imax(0, -g.iymin); j < imin(g.ny, c->ny - g.iymin); j++) {
            double pymin = g.ymin_e + j * g.dy;
            bounds b = row_bounds(pymin + g.dy * 0.5, c->r, c->r_in, pixel_radius);
            int64_t i0, i1, full0, full1, hole0, hole1;
            index_range(b.far_out, g.xmin_e, g.dx, 1, &i0, &i1);
            index_range(b.in_out, g.xmin_e, g.dx, -1, &full0, &full1);
            index_range(b.far_in, g.xmin_e, g.dx, 1, &hole0, &hole1);
            int64_t row = (g.iymin + j) * c->nx + g.ixmin;
            for (int64_t i = imax(imax(0, -g.ixmin), i0); i < imin(imin(g.nx, c->nx - g.ixmin), i1);
                 i++) {
                double w;
                if (full0 <= i && i < full1 && !(hole0 <= i && i < hole1))
                    w = 1.0;
                else
                    w = pixel_weight(g.xmin_e + i * g.dx, pymin, g.dx, g.dy, c->r, c->r_in,
                                     pixel_radius, &b, c->method, c->nsub);
                if (w <= 0.0 || (c->use_mask && c->excluded[row + i])) continue;
                double v = c->data[row + i];
                if (!isfinite(v)) {
                    nonfinite++;
                    continue;
                }
                total += v * w;
                if (c->use_err) {
                    double e = c->error[row + i];
                    var += e * e * w;
                }
            }
        }
        c->sums[k] = total;
        c->errs[k] = sqrt(var);
    }
    if (nonfinite) ck_atomic_add(&c->nonfinite, nonfinite);
}

/* circle_sums(data[ny, nx], excluded[ny, nx] or [0, 0], error[ny, nx] or [0, 0], x[n], y[n],
 *             r, r_in, method, nsub, sums[n], errs[n]) -> number of skipped non-finite pixels */
PyObject *ck_circle_sums(PyObject *self, PyObject *args)
{
    PyObject *o[7];
    sums_ctx c;
    ck_buf b[7] = {{{0}}};
    PyObject *ret = NULL;
    if (!PyArg_ParseTuple(args, "OOOOOddiiOO", &o[0], &o[1], &o[2], &o[3], &o[4], &c.r, &c.r_in,
                          &c.method, &c.nsub, &o[5], &o[6]))
        return NULL;
    if (ck_get(o[0], &b[0], 'd', 0, 2, "data") || ck_get(o[1], &b[1], 'b', 0, 2, "excluded")
        || ck_get(o[2], &b[2], 'd', 0, 2, "error") || ck_get(o[3], &b[3], 'd', 0, 1, "x")
        || ck_get(o[4], &b[4], 'd', 0, 1, "y") || ck_get(o[5], &b[5], 'd', 1, 1, "sums")
        || ck_get(o[6], &b[6], 'd', 1, 1, "errs"))
        goto done;
    c.ny = CK_SHAPE(b[0], 0);
    c.nx = CK_SHAPE(b[0], 1);
    c.use_mask = CK_SHAPE(b[1], 0) > 0;
    c.use_err = CK_SHAPE(b[2], 0) > 0;
    Py_ssize_t n = ck_size(&b[3]);
    if (ck_check(ck_size(&b[4]) == n && ck_size(&b[5]) == n && ck_size(&b[6]) == n
                     && (!c.use_mask || (CK_SHAPE(b[1], 0) == c.ny && CK_SHAPE(b[1], 1) == c.nx))
                     && (!c.use_err || (CK_SHAPE(b[2], 0) == c.ny && CK_SHAPE(b[2], 1) == c.nx))
                     && c.nsub >= 1 && c.method >= 0 && c.method <= 2,
                 "circle_sums: shapes"))
        goto done;
    init_seg();
    c.data = CK_D(b[0]);
    c.excluded = CK_B(b[1]);
    c.error = CK_D(b[2]);
    c.x = CK_D(b[3]);
    c.y = CK_D(b[4]);
    c.sums = CK_D(b[5]);
    c.errs = CK_D(b[6]);
    c.nonfinite = 0;
    Py_BEGIN_ALLOW_THREADS
    ck_parallel_for(n, 16, sums_range, &c);
    Py_END_ALLOW_THREADS
    ret = PyLong_FromLongLong((long long)c.nonfinite);
done:
    ck_release(b, 7);
    return ret;
}

typedef struct {
    const double *data, *x, *y;
    const unsigned char *excluded;
    int use_mask;
    Py_ssize_t ny, nx, m;
    double r_in, r_out, *vals;
    int64_t *counts;
} gather_ctx;

static void gather_range(void *vctx, Py_ssize_t lo, Py_ssize_t hi)
{
    gather_ctx *c = (gather_ctx *)vctx;
    for (Py_ssize_t k = lo; k < hi; k++) {
        if (!usable(c->x[k], c->y[k], c->r_out)) {
            c->counts[k] = 0;
            continue;
        }
        grid g = source_grid(c->x[k], c->y[k], c->r_out);
        double pixel_radius = 0.5 * sqrt(g.dx * g.dx + g.dy * g.dy);
        int64_t m = 0;
        double *row_out = c->vals + k * c->m;
        for (int64_t j = imax(0, -g.iymin); j < imin(g.ny, c->ny - g.iymin); j++) {
            double pymin = g.ymin_e + j * g.dy;
            bounds b = row_bounds(pymin + g.dy * 0.5, c->r_out, c->r_in, pixel_radius);
            int64_t row = (g.iymin + j) * c->nx + g.ixmin;
            for (int64_t i = imax(0, -g.ixmin); i < imin(g.nx, c->nx - g.ixmin); i++) {
                double w = pixel_weight(g.xmin_e + i * g.dx, pymin, g.dx, g.dy, c->r_out, c->r_in,
                                        pixel_radius, &b, 1, 1);
                if (w <= 0.0 || (c->use_mask && c->excluded[row + i])) continue;
                double v = c->data[row + i];
                if (isfinite(v) && m < c->m) row_out[m++] = v;
            }
        }
        c->counts[k] = m;
    }
}

/* annulus_gather(data[ny, nx], excluded[ny, nx] or [0, 0], x[n], y[n], r_in, r_out,
 *                vals[n, m], counts[n]): centre-rule annulus values packed left */
PyObject *ck_annulus_gather(PyObject *self, PyObject *args)
{
    PyObject *o[6];
    gather_ctx c;
    ck_buf b[6] = {{{0}}};
    PyObject *ret = NULL;
    if (!PyArg_ParseTuple(args, "OOOOddOO", &o[0], &o[1], &o[2], &o[3], &c.r_in, &c.r_out, &o[4],
                          &o[5]))
        return NULL;
    if (ck_get(o[0], &b[0], 'd', 0, 2, "data") || ck_get(o[1], &b[1], 'b', 0, 2, "excluded")
        || ck_get(o[2], &b[2], 'd', 0, 1, "x") || ck_get(o[3], &b[3], 'd', 0, 1, "y")
        || ck_get(o[4], &b[4], 'd', 1, 2, "vals") || ck_get(o[5], &b[5], 'i', 1, 1, "counts"))
        goto done;
    c.ny = CK_SHAPE(b[0], 0);
    c.nx = CK_SHAPE(b[0], 1);
    c.use_mask = CK_SHAPE(b[1], 0) > 0;
    Py_ssize_t n = ck_size(&b[2]);
    c.m = CK_SHAPE(b[4], 1);
    if (ck_check(ck_size(&b[3]) == n && CK_SHAPE(b[4], 0) == n && ck_size(&b[5]) == n
                     && (!c.use_mask || (CK_SHAPE(b[1], 0) == c.ny && CK_SHAPE(b[1], 1) == c.nx)),
                 "annulus_gather: shapes"))
        goto done;
    init_seg();
    c.data = CK_D(b[0]);
    c.excluded = CK_B(b[1]);
    c.x = CK_D(b[2]);
    c.y = CK_D(b[3]);
    c.vals = CK_D(b[4]);
    c.counts = CK_I(b[5]);
    Py_BEGIN_ALLOW_THREADS
    ck_parallel_for(n, 16, gather_range, &c);
    Py_END_ALLOW_THREADS
    ret = Py_NewRef(Py_None);
done:
    ck_release(b, 6);
    return ret;
}
