/* Blended bicubic interpolating-spline evaluation (ImagePSF / GriddedPSFModel).
 *
 * coeffs[g, cny, cnx] are spline coefficients of g ePSFs; table[m, k, p] multiplies u^p in basis
 * m + k on knot interval m (u = x - starts[m]); see core/kernels/spline.py. A star blends the
 * ePSFs gidx[i, :] with weights gw[i, :] (and their position derivatives gdx, gdy). */
#include "ck.h"

typedef struct {
    int64_t m;
    double w[4], d[4];
    int ok;
} basis;

static inline basis basis_at(double x, const double *table, const double *starts, int64_t n,
                             int clamp)
{
    basis b;
    int valid = x >= 0.0 && x <= n - 1.0;
    if (!valid) x = x != x ? 0.0 : (x < 0.0 ? 0.0 : (double)(n - 1));
    int64_t m = (int64_t)floor(x) - 1;
    if (m < 0) m = 0;
    else if (m > n - 4) m = n - 4;
    double u = x - starts[m];
    const double *t = table + m * 16;
    for (int k = 0; k < 4; k++) {
        const double *p = t + 4 * k;
        b.w[k] = ((p[3] * u + p[2]) * u + p[1]) * u + p[0];
        b.d[k] = valid ? (3.0 * p[3] * u + 2.0 * p[2]) * u + p[1] : 0.0;
    }
    b.m = m;
    b.ok = valid || clamp;
    return b;
}

typedef struct {
    const double *coeffs, *tx, *sx, *ty, *sy;
    int64_t g, cny, cnx, nk;
    const int64_t *gidx;
    const double *gw, *gdx, *gdy;
    double ox, oy, fill;
    int clamp, grad;
} spline;

/* -- arbitrary points -------------------------------------------------------------------- */
typedef struct {
    spline s;
    const double *xi, *yi;
    const int64_t *star;
    double *out;
    Py_ssize_t np;
} points_ctx;

static void points_range(void *vctx, Py_ssize_t lo, Py_ssize_t hi)
{
    points_ctx *c = (points_ctx *)vctx;
    const spline *s = &c->s;
    for (Py_ssize_t p = lo; p < hi; p++) {
        basis bx = basis_at(c->xi[p], s->tx, s->sx, s->cnx, s->clamp);
        basis by = basis_at(c->yi[p], s->ty, s->sy, s->cny, s->clamp);
        if (!(bx.ok && by.ok)) {
            c->out[p] = s->fill;
            if (s->grad) c->out[c->np + p] = c->out[2 * c->np + p] = 0.0;
            continue;
        }
        int64_t st = c->star[p];
        double val = 0.0, gx = 0.0, gy = 0.0;
        for (int64_t k = 0; k < s->nk; k++) {
            const double *cf = s->coeffs + s->gidx[st * s->nk + k] * s->cny * s->cnx;
            double sv = 0.0, sxd = 0.0, syd = 0.0;
            for (int a = 0; a < 4; a++) {
                const double *row = cf + (by.m + a) * s->cnx + bx.m;
                double r = bx.w[0] * row[0] + bx.w[1] * row[1] + bx.w[2] * row[2]
                           + bx.w[3] * row[3];
                sv += by.w[a] * r;
                if (s->grad) {
                    syd += by.d[a] * r;
                    sxd += by.w[a] * (bx.d[0] * row[0] + bx.d[1] * row[1] + bx.d[2] * row[2]
                                      + bx.d[3] * row[3]);
                }
            }
            double w = s->gw[st * s->nk + k];
            val += w * sv;
            if (s->grad) {
                gx += s->gdx[st * s->nk + k] * sv - s->ox * w * sxd;
                gy += s->gdy[st * s->nk + k] * sv - s->oy * w * syd;
            }
        }
        c->out[p] = val;
        if (s->grad) {
            c->out[c->np + p] = gx;
            c->out[2 * c->np + p] = gy;
        }
    }
}

/* -- regular stamps ---------------------------------------------------------------------- */
typedef struct {
    spline s;
    double orx, ory;
    const double *x0, *y0;
    const int64_t *xlo, *ylo, *order;
    double *out;
    Py_ssize_t n, ny, nx, chunk;
} stamps_ctx;

/* value = wx . (sum_k wy gw C); d/dx0 = wx . (sum wy gdx C) - ox dwx . (value rows);
 * d/dy0 = wx . (sum (wy gdy - oy dwy gw) C). Output rows outermost: the stars of a chunk
 * (sorted by grid cell) reuse the same coefficient rows from cache. */
static void stamps_range(void *vctx, Py_ssize_t lo, Py_ssize_t hi)
{
    stamps_ctx *c = (stamps_ctx *)vctx;
    const spline *s = &c->s;
    Py_ssize_t ny = c->ny, nx = c->nx, ch = c->chunk, plane = c->n * ny * nx;
    basis *bx = malloc(sizeof(basis) * (size_t)(ch * nx + 1));
    basis *by = malloc(sizeof(basis) * (size_t)(ch * ny + 1));
    double *v = malloc(sizeof(double) * (size_t)(3 * s->cnx + 3));
    if (!bx || !by || !v) { /* out of memory: NaN stamps rather than garbage */
        for (Py_ssize_t q = lo * ch; q < hi * ch && q < c->n; q++) {
            Py_ssize_t i = c->order[q];
            for (int g = 0; g < (s->grad ? 3 : 1); g++)
                for (Py_ssize_t t = 0; t < ny * nx; t++) c->out[g * plane + i * ny * nx + t] = NAN;
        }
        free(bx);
        free(by);
        free(v);
        return;
    }
    double *vgx = v + s->cnx + 1, *vy = v + 2 * s->cnx + 2;
    for (Py_ssize_t chn = lo; chn < hi; chn++) {
        Py_ssize_t i0 = chn * ch, m = (i0 + ch < c->n ? i0 + ch : c->n) - i0;
        for (Py_ssize_t t = 0; t < m; t++) {
            Py_ssize_t i = c->order[i0 + t];
            for (Py_ssize_t q = 0; q < nx; q++)
                bx[t * nx + q] = basis_at(s->ox * ((double)(c->xlo[i] + q) - c->x0[i]) + c->orx,
                                          s->tx, s->sx, s->cnx, s->clamp);
            for (Py_ssize_t r = 0; r < ny; r++)
                by[t * ny + r] = basis_at(s->oy * ((double)(c->ylo[i] + r) - c->y0[i]) + c->ory,
                                          s->ty, s->sy, s->cny, s->clamp);
        }
        for (Py_ssize_t r = 0; r < ny; r++) {
            for (Py_ssize_t t = 0; t < m; t++) {
                Py_ssize_t i = c->order[i0 + t];
                double *o0 = c->out + (i * ny + r) * nx;
                const basis *b = &by[t * ny + r];
                const basis *bxs = &bx[t * nx];
                if (!b->ok) {
                    for (Py_ssize_t q = 0; q < nx; q++) o0[q] = s->fill;
                    if (s->grad)
                        for (Py_ssize_t q = 0; q < nx; q++) o0[plane + q] = o0[2 * plane + q] = 0.0;
                    continue;
                }
                int64_t cl = bxs[0].m, span = bxs[nx - 1].m + 4 - cl;
                for (int64_t q = 0; q < span; q++) v[q] = 0.0;
                if (s->grad)
                    for (int64_t q = 0; q < span; q++) vgx[q] = vy[q] = 0.0;
                int64_t j = b->m;
                for (int64_t k = 0; k < s->nk; k++) {
                    double gk = s->gw[i * s->nk + k];
                    const double *cf = s->coeffs + s->gidx[i * s->nk + k] * s->cny * s->cnx
                                       + j * s->cnx + cl;
                    const double *c0 = cf, *c1 = cf + s->cnx, *c2 = cf + 2 * s->cnx,
                                 *c3 = cf + 3 * s->cnx;
                    if (!s->grad) {
                        if (gk == 0.0) continue;
                        double w0 = b->w[0] * gk, w1 = b->w[1] * gk, w2 = b->w[2] * gk,
                               w3 = b->w[3] * gk;
                        for (int64_t q = 0; q < span; q++)
                            v[q] += w0 * c0[q] + w1 * c1[q] + w2 * c2[q] + w3 * c3[q];
                        continue;
                    }
                    double xk = s->gdx[i * s->nk + k], yk = s->gdy[i * s->nk + k];
                    if (gk == 0.0 && xk == 0.0 && yk == 0.0) continue;
                    double v0 = b->w[0] * gk, v1 = b->w[1] * gk, v2 = b->w[2] * gk,
                           v3 = b->w[3] * gk;
                    double x0_ = b->w[0] * xk, x1_ = b->w[1] * xk, x2_ = b->w[2] * xk,
                           x3_ = b->w[3] * xk;
                    double y0_ = b->w[0] * yk - s->oy * b->d[0] * gk;
                    double y1_ = b->w[1] * yk - s->oy * b->d[1] * gk;
                    double y2_ = b->w[2] * yk - s->oy * b->d[2] * gk;
                    double y3_ = b->w[3] * yk - s->oy * b->d[3] * gk;
                    for (int64_t q = 0; q < span; q++) {
                        double a0 = c0[q], a1 = c1[q], a2 = c2[q], a3 = c3[q];
                        v[q] += v0 * a0 + v1 * a1 + v2 * a2 + v3 * a3;
                        vgx[q] += x0_ * a0 + x1_ * a1 + x2_ * a2 + x3_ * a3;
                        vy[q] += y0_ * a0 + y1_ * a1 + y2_ * a2 + y3_ * a3;
                    }
                }
                for (Py_ssize_t q = 0; q < nx; q++) {
                    const basis *a = &bxs[q];
                    if (!a->ok) {
                        o0[q] = s->fill;
                        if (s->grad) o0[plane + q] = o0[2 * plane + q] = 0.0;
                        continue;
                    }
                    int64_t e = a->m - cl;
                    o0[q] = a->w[0] * v[e] + a->w[1] * v[e + 1] + a->w[2] * v[e + 2]
                            + a->w[3] * v[e + 3];
                    if (s->grad) {
                        o0[plane + q] = a->w[0] * vgx[e] + a->w[1] * vgx[e + 1]
                                        + a->w[2] * vgx[e + 2] + a->w[3] * vgx[e + 3]
                                        - s->ox * (a->d[0] * v[e] + a->d[1] * v[e + 1]
                                                   + a->d[2] * v[e + 2] + a->d[3] * v[e + 3]);
                        o0[2 * plane + q] = a->w[0] * vy[e] + a->w[1] * vy[e + 1]
                                            + a->w[2] * vy[e + 2] + a->w[3] * vy[e + 3];
                    }
                }
            }
        }
    }
    free(bx);
    free(by);
    free(v);
}

/* -- bindings ---------------------------------------------------------------------------- */
/* check the spline description: coeffs[g, cny, cnx], tables, blend arrays [n, nk] */
static int get_spline(PyObject **o, ck_buf *b, spline *s, int grad, Py_ssize_t nstar)
{
    if (ck_get(o[0], &b[0], 'd', 0, 3, "coeffs") || ck_get(o[1], &b[1], 'd', 0, 3, "table_x")
        || ck_get(o[2], &b[2], 'd', 0, 1, "starts_x") || ck_get(o[3], &b[3], 'd', 0, 3, "table_y")
        || ck_get(o[4], &b[4], 'd', 0, 1, "starts_y") || ck_get(o[5], &b[5], 'i', 0, 2, "gidx")
        || ck_get(o[6], &b[6], 'd', 0, 2, "gw") || ck_get(o[7], &b[7], 'd', 0, 2, "gdx")
        || ck_get(o[8], &b[8], 'd', 0, 2, "gdy"))
        return -1;
    s->g = CK_SHAPE(b[0], 0);
    s->cny = CK_SHAPE(b[0], 1);
    s->cnx = CK_SHAPE(b[0], 2);
    s->nk = CK_SHAPE(b[5], 1);
    Py_ssize_t n = CK_SHAPE(b[5], 0);
    if (ck_check(s->cny >= 4 && s->cnx >= 4 && CK_SHAPE(b[1], 0) == s->cnx - 3
                     && CK_SHAPE(b[1], 1) == 4 && CK_SHAPE(b[1], 2) == 4
                     && ck_size(&b[2]) == s->cnx - 3 && CK_SHAPE(b[3], 0) == s->cny - 3
                     && CK_SHAPE(b[3], 1) == 4 && CK_SHAPE(b[3], 2) == 4
                     && ck_size(&b[4]) == s->cny - 3 && n >= nstar && ck_size(&b[6]) == n * s->nk
                     && (!grad || (ck_size(&b[7]) == n * s->nk && ck_size(&b[8]) == n * s->nk)),
                 "spline: coefficient, table or blend shapes"))
        return -1;
    const int64_t *gidx = CK_I(b[5]);
    for (Py_ssize_t q = 0; q < n * s->nk; q++)
        if (ck_check(gidx[q] >= 0 && gidx[q] < s->g, "spline: ePSF index out of range")) return -1;
    s->coeffs = CK_D(b[0]);
    s->tx = CK_D(b[1]);
    s->sx = CK_D(b[2]);
    s->ty = CK_D(b[3]);
    s->sy = CK_D(b[4]);
    s->gidx = gidx;
    s->gw = CK_D(b[6]);
    s->gdx = CK_D(b[7]);
    s->gdy = CK_D(b[8]);
    s->grad = grad;
    return 0;
}

/* spline_points(coeffs, table_x, starts_x, table_y, starts_y, gidx, gw, gdx, gdy,
 *               xi[p], yi[p], star[p], ox, oy, fill, clamp, out[1 or 3, p]) */
PyObject *ck_spline_points(PyObject *self, PyObject *args)
{
    PyObject *o[13];
    points_ctx c;
    ck_buf b[13] = {{{0}}};
    PyObject *ret = NULL;
    if (!PyArg_ParseTuple(args, "OOOOOOOOOOOOdddpO", &o[0], &o[1], &o[2], &o[3], &o[4], &o[5],
                          &o[6], &o[7], &o[8], &o[9], &o[10], &o[11], &c.s.ox, &c.s.oy, &c.s.fill,
                          &c.s.clamp, &o[12]))
        return NULL;
    if (ck_get(o[12], &b[12], 'd', 1, 2, "out")) goto done;
    int grad = CK_SHAPE(b[12], 0) == 3;
    if (ck_check(grad || CK_SHAPE(b[12], 0) == 1, "spline_points: out has 1 or 3 rows")
        || get_spline(o, b, &c.s, grad, 0) || ck_get(o[9], &b[9], 'd', 0, 1, "xi")
        || ck_get(o[10], &b[10], 'd', 0, 1, "yi") || ck_get(o[11], &b[11], 'i', 0, 1, "star"))
        goto done;
    c.np = ck_size(&b[9]);
    if (ck_check(ck_size(&b[10]) == c.np && ck_size(&b[11]) == c.np && CK_SHAPE(b[12], 1) == c.np,
                 "spline_points: point arrays"))
        goto done;
    Py_ssize_t nstar = CK_SHAPE(b[5], 0);
    const int64_t *star = CK_I(b[11]);
    for (Py_ssize_t p = 0; p < c.np; p++)
        if (ck_check(star[p] >= 0 && star[p] < nstar, "spline_points: star index out of range"))
            goto done;
    c.xi = CK_D(b[9]);
    c.yi = CK_D(b[10]);
    c.star = star;
    c.out = CK_D(b[12]);
    Py_BEGIN_ALLOW_THREADS
    ck_parallel_for(c.np, 1024, points_range, &c);
    Py_END_ALLOW_THREADS
    ret = Py_NewRef(Py_None);
done:
    ck_release(b, 13);
    return ret;
}

/* spline_stamps(coeffs, table_x, starts_x, table_y, starts_y, gidx, gw, gdx, gdy,
 *               x0[n], y0[n], xlo[n], ylo[n], order[n], ox, oy, orx, ory, fill, clamp, chunk,
 *               out[1 or 3, n, ny, nx]): star i samples x = ox (xlo[i] + q - x0[i]) + orx */
PyObject *ck_spline_stamps(PyObject *self, PyObject *args)
{
    PyObject *o[15];
    stamps_ctx c;
    ck_buf b[15] = {{{0}}};
    PyObject *ret = NULL;
    if (!PyArg_ParseTuple(args, "OOOOOOOOOOOOOOdddddpnO", &o[0], &o[1], &o[2], &o[3], &o[4],
                          &o[5], &o[6], &o[7], &o[8], &o[9], &o[10], &o[11], &o[12], &o[13],
                          &c.s.ox, &c.s.oy, &c.orx, &c.ory, &c.s.fill, &c.s.clamp, &c.chunk,
                          &o[14]))
        return NULL;
    if (ck_get(o[14], &b[14], 'd', 1, 4, "out")) goto done;
    int grad = CK_SHAPE(b[14], 0) == 3;
    c.n = CK_SHAPE(b[14], 1);
    c.ny = CK_SHAPE(b[14], 2);
    c.nx = CK_SHAPE(b[14], 3);
    if (ck_check(grad || CK_SHAPE(b[14], 0) == 1, "spline_stamps: out has 1 or 3 planes")
        || get_spline(o, b, &c.s, grad, c.n) || ck_get(o[9], &b[9], 'd', 0, 1, "x0")
        || ck_get(o[10], &b[10], 'd', 0, 1, "y0") || ck_get(o[11], &b[11], 'i', 0, 1, "xlo")
        || ck_get(o[12], &b[12], 'i', 0, 1, "ylo") || ck_get(o[13], &b[13], 'i', 0, 1, "order"))
        goto done;
    if (ck_check(ck_size(&b[9]) == c.n && ck_size(&b[10]) == c.n && ck_size(&b[11]) == c.n
                     && ck_size(&b[12]) == c.n && ck_size(&b[13]) == c.n && c.chunk >= 1
                     && c.nx >= 1 && c.ny >= 1,
                 "spline_stamps: star arrays"))
        goto done;
    const int64_t *order = CK_I(b[13]);
    for (Py_ssize_t q = 0; q < c.n; q++)
        if (ck_check(order[q] >= 0 && order[q] < c.n, "spline_stamps: order out of range"))
            goto done;
    c.x0 = CK_D(b[9]);
    c.y0 = CK_D(b[10]);
    c.xlo = CK_I(b[11]);
    c.ylo = CK_I(b[12]);
    c.order = order;
    c.out = CK_D(b[14]);
    Py_BEGIN_ALLOW_THREADS
    ck_parallel_for((c.n + c.chunk - 1) / c.chunk, 1, stamps_range, &c);
    Py_END_ALLOW_THREADS
    ret = Py_NewRef(Py_None);
done:
    ck_release(b, 15);
    return ret;
}
