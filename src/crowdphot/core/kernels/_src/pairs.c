/* Fixed-radius neighbour search on a uniform grid of cells, and friends-of-friends groups.
 *
 * The points of set B are binned in square cells of side cs >= r and sorted by cell; a query
 * point visits the 3 x 3 cells around its own, so every point of B within distance r of it is
 * a candidate, and the exact test (the same floating-point expression as the numpy code it
 * replaces) decides. The cells are laid over the bounding box of A and B together, with
 * cs = max(r, span / 2^30) * (1 + 2^-20): cell indices stay below 2^30 per axis (keys fit in
 * int64 whatever the coordinates' range), and the 2^-20 margin is larger than the rounding of
 * (x - x0) / cs, so two points within r never land two cells apart. Serial; O(n log n) for the
 * sort plus the candidates. */
#include "ck.h"

typedef struct {
    int64_t key, idx;
} ck_keyidx;

/* B binned in cells, key = cy * ncx + cx. Dense grid (at most 16 cells a point, + 4096):
 * cstart[key] is the start of the cell's run in `order` (counting sort). Otherwise sparse (a
 * radius tiny against the spread of the points): skey[k] is the key of order[k], sorted, and a
 * row of cells is found by binary search. Within a cell, points are in index order either way. */
typedef struct {
    double x0, y0, cs;
    int64_t ncx, ncy;
    Py_ssize_t nb;
    int dense;
    int64_t *order;  /* (nb,) B indices sorted by (cell key, index) */
    double *xs, *ys; /* (nb,) B's coordinates in that order (neighbour scans read contiguously) */
    int64_t *cstart; /* dense: (ncx * ncy + 1,) */
    int64_t *skey;   /* sparse: (nb,) */
} ck_cells;

static int ck_cmp_keyidx(const void *a, const void *b)
{
    const ck_keyidx *p = a, *q = b;
    if (p->key != q->key) return p->key < q->key ? -1 : 1;
    return (p->idx > q->idx) - (p->idx < q->idx);
}

static int ck_cmp_i64(const void *a, const void *b)
{
    int64_t p = *(const int64_t *)a, q = *(const int64_t *)b;
    return (p > q) - (p < q);
}

static int64_t ck_cell_index(double v, double v0, double cs, int64_t nc)
{
    double q = floor((v - v0) / cs);
    if (!(q >= 0.0)) return 0; /* also NaN, from an infinite span */
    if (q >= (double)(nc - 1)) return nc - 1;
    return (int64_t)q;
}

static void ck_cells_free(ck_cells *c)
{
    free(c->order);
    free(c->cstart);
    free(c->skey);
    free(c->xs);
    free(c->ys);
    c->order = c->cstart = c->skey = NULL;
    c->xs = c->ys = NULL;
}

/* Bin B = (xb, yb) in cells laid over the bounding box of A and B. Returns -1 on no memory. */
static int ck_cells_build(ck_cells *c, const double *xa, const double *ya, Py_ssize_t na,
                          const double *xb, const double *yb, Py_ssize_t nb, double r)
{
    double xlo = INFINITY, xhi = -INFINITY, ylo = INFINITY, yhi = -INFINITY;
    for (Py_ssize_t i = 0; i < na; i++) {
        if (xa[i] < xlo) xlo = xa[i];
        if (xa[i] > xhi) xhi = xa[i];
        if (ya[i] < ylo) ylo = ya[i];
        if (ya[i] > yhi) yhi = ya[i];
    }
    for (Py_ssize_t i = 0; i < nb; i++) {
        if (xb[i] < xlo) xlo = xb[i];
        if (xb[i] > xhi) xhi = xb[i];
        if (yb[i] < ylo) ylo = yb[i];
        if (yb[i] > yhi) yhi = yb[i];
    }
    memset(c, 0, sizeof(*c));
    c->nb = nb;
    if (na + nb == 0) xlo = xhi = ylo = yhi = 0.0;
    double span = xhi - xlo > yhi - ylo ? xhi - xlo : yhi - ylo;
    double cs = r > span * 0x1p-30 ? r : span * 0x1p-30;
    cs *= 1.0 + 0x1p-20;
    if (!(cs > 0.0)) cs = 1.0;
    c->x0 = xlo;
    c->y0 = ylo;
    c->cs = cs;
    c->ncx = c->ncy = 1;
    if (isfinite(cs)) {
        double qx = floor((xhi - xlo) / cs), qy = floor((yhi - ylo) / cs);
        if (qx >= 0.0 && qx < 0x1p31) c->ncx = (int64_t)qx + 1;
        if (qy >= 0.0 && qy < 0x1p31) c->ncy = (int64_t)qy + 1;
    }
    int64_t ncell = c->ncx * c->ncy;
    c->dense = ncell <= 16 * (int64_t)nb + 4096; /* at most 128 bytes of cell starts a point */
    size_t nb1 = (size_t)(nb > 0 ? nb : 1);
    c->order = malloc(sizeof(int64_t) * nb1);
    c->xs = malloc(sizeof(double) * nb1);
    c->ys = malloc(sizeof(double) * nb1);
    int64_t *key = malloc(sizeof(int64_t) * nb1);
    if (!c->order || !c->xs || !c->ys || !key) goto nomem;
    for (Py_ssize_t i = 0; i < nb; i++) {
        int64_t cx = ck_cell_index(xb[i], c->x0, cs, c->ncx);
        int64_t cy = ck_cell_index(yb[i], c->y0, cs, c->ncy);
        key[i] = cy * c->ncx + cx;
    }
    if (c->dense) { /* counting sort: stable, so index order within a cell */
        c->cstart = calloc((size_t)ncell + 1, sizeof(int64_t));
        if (!c->cstart) goto nomem;
        for (Py_ssize_t i = 0; i < nb; i++) c->cstart[key[i] + 1]++;
        for (int64_t k = 0; k < ncell; k++) c->cstart[k + 1] += c->cstart[k];
        for (Py_ssize_t i = 0; i < nb; i++) c->order[c->cstart[key[i]]++] = i;
        for (int64_t k = ncell; k > 0; k--) c->cstart[k] = c->cstart[k - 1];
        c->cstart[0] = 0;
        free(key);
        goto sorted_xy;
    }
    ck_keyidx *ki = malloc(sizeof(ck_keyidx) * nb1);
    c->skey = key;
    if (!ki) goto nomem;
    for (Py_ssize_t i = 0; i < nb; i++) {
        ki[i].key = key[i];
        ki[i].idx = i;
    }
    qsort(ki, (size_t)nb, sizeof(ck_keyidx), ck_cmp_keyidx);
    for (Py_ssize_t i = 0; i < nb; i++) {
        c->order[i] = ki[i].idx;
        c->skey[i] = ki[i].key;
    }
    free(ki);
sorted_xy:
    for (Py_ssize_t k = 0; k < nb; k++) {
        c->xs[k] = xb[c->order[k]];
        c->ys[k] = yb[c->order[k]];
    }
    return 0;
nomem:
    if (key != c->skey) free(key);
    ck_cells_free(c);
    return -1;
}

/* The run [*k0, *k1) of `order` holding the cells (gx0..gx1, gy), consecutive keys. */
static void ck_cells_row(const ck_cells *c, int64_t gy, int64_t gx0, int64_t gx1,
                         Py_ssize_t *k0, Py_ssize_t *k1)
{
    int64_t lo = gy * c->ncx + gx0, hi = gy * c->ncx + gx1;
    if (c->dense) {
        *k0 = (Py_ssize_t)c->cstart[lo];
        *k1 = (Py_ssize_t)c->cstart[hi + 1];
        return;
    }
    Py_ssize_t a = 0, b = c->nb;
    while (a < b) { /* first k with skey[k] >= lo */
        Py_ssize_t mid = a + (b - a) / 2;
        if (c->skey[mid] < lo) a = mid + 1;
        else b = mid;
    }
    *k0 = a;
    while (a < c->nb && c->skey[a] <= hi) a++;
    *k1 = a;
}

/* Points b = order[k] of B (b > a when `upper`) with dist(A[a], B[b]) <= r; metric 2:
 * sqrt(dx*dx + dy*dy), else max(|dx|, |dy|), dx = xa[a] - xb[b]. Writes their sorted positions
 * k to hits (unsorted); returns the count or -1 when out of memory. */
static Py_ssize_t ck_cells_query(const ck_cells *c, double xq, double yq, Py_ssize_t a,
                                 int upper, double r, int metric, int64_t **hits,
                                 Py_ssize_t *cap)
{
    int64_t cx = ck_cell_index(xq, c->x0, c->cs, c->ncx);
    int64_t cy = ck_cell_index(yq, c->y0, c->cs, c->ncy);
    int64_t gx0 = cx > 0 ? cx - 1 : 0, gx1 = cx + 1 < c->ncx ? cx + 1 : c->ncx - 1;
    Py_ssize_t nh = 0;
    for (int64_t gy = cy - 1; gy <= cy + 1; gy++) {
        if (gy < 0 || gy >= c->ncy) continue;
        Py_ssize_t k0, k1;
        ck_cells_row(c, gy, gx0, gx1, &k0, &k1);
        for (Py_ssize_t k = k0; k < k1; k++) {
            if (upper && c->order[k] <= a) continue;
            double dx = xq - c->xs[k], dy = yq - c->ys[k];
            int hit;
            if (metric == 2) {
                hit = sqrt(dx * dx + dy * dy) <= r;
            } else {
                double ax = fabs(dx), ay = fabs(dy);
                hit = (ax > ay ? ax : ay) <= r;
            }
            if (!hit) continue;
            if (nh == *cap) {
                Py_ssize_t ncap = *cap ? 2 * *cap : 64;
                int64_t *p = realloc(*hits, sizeof(int64_t) * (size_t)ncap);
                if (!p) return -1;
                *hits = p;
                *cap = ncap;
            }
            (*hits)[nh++] = k;
        }
    }
    return nh;
}

/* out = indices 0..n-1 of points (x, y) sorted by their cell in `c` (stable). -1: no memory. */
static int ck_cells_sort_points(const ck_cells *c, const double *x, const double *y,
                                Py_ssize_t n, int64_t *out)
{
    int64_t *key = malloc(sizeof(int64_t) * (size_t)(n > 0 ? n : 1));
    if (!key) return -1;
    for (Py_ssize_t i = 0; i < n; i++)
        key[i] = ck_cell_index(y[i], c->y0, c->cs, c->ncy) * c->ncx
                 + ck_cell_index(x[i], c->x0, c->cs, c->ncx);
    if (c->dense) { /* counting sort */
        int64_t ncell = c->ncx * c->ncy;
        int64_t *start = calloc((size_t)ncell + 1, sizeof(int64_t));
        if (!start) {
            free(key);
            return -1;
        }
        for (Py_ssize_t i = 0; i < n; i++) start[key[i] + 1]++;
        for (int64_t k = 0; k < ncell; k++) start[k + 1] += start[k];
        for (Py_ssize_t i = 0; i < n; i++) out[start[key[i]]++] = i;
        free(start);
        free(key);
        return 0;
    }
    ck_keyidx *ki = malloc(sizeof(ck_keyidx) * (size_t)(n > 0 ? n : 1));
    if (!ki) {
        free(key);
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        ki[i].key = key[i];
        ki[i].idx = i;
    }
    qsort(ki, (size_t)n, sizeof(ck_keyidx), ck_cmp_keyidx);
    for (Py_ssize_t i = 0; i < n; i++) out[i] = ki[i].idx;
    free(ki);
    free(key);
    return 0;
}

static int ck_all_finite(const double *v, Py_ssize_t n)
{
    for (Py_ssize_t i = 0; i < n; i++)
        if (!isfinite(v[i])) return 0;
    return 1;
}

static int ck_check_points(ck_buf *b, int n, double r, const char *what)
{
    for (int k = 0; k < n; k += 2) {
        if (ck_size(&b[k]) != ck_size(&b[k + 1])) {
            PyErr_Format(PyExc_ValueError, "%s: x and y of one length", what);
            return -1;
        }
        if (!ck_all_finite(CK_D(b[k]), ck_size(&b[k]))
            || !ck_all_finite(CK_D(b[k + 1]), ck_size(&b[k + 1]))) {
            PyErr_Format(PyExc_ValueError, "%s: coordinates must be finite (NaN or inf found)",
                         what);
            return -1;
        }
    }
    if (!(r >= 0.0) || !isfinite(r)) {
        PyErr_Format(PyExc_ValueError, "%s: the radius must be finite and >= 0", what);
        return -1;
    }
    return 0;
}

/* close_pairs(xa[na], ya[na], xb[nb], yb[nb], r, metric, upper) -> (ia, ib) as bytearrays of
 * int64: every pair with dist(A[ia], B[ib]) <= r (ib > ia when `upper`, for A is B), sorted
 * by (ia, ib). metric 2: Euclidean, 0: Chebyshev. */
PyObject *ck_close_pairs(PyObject *self, PyObject *args)
{
    PyObject *o[4];
    double r;
    int metric, upper;
    ck_buf b[4] = {{{0}}};
    ck_cells cells = {0};
    int64_t *ia = NULL, *ib = NULL, *hits = NULL, *aorder = NULL, *oa = NULL, *ob = NULL;
    int64_t *seg = NULL;
    PyObject *ret = NULL, *ba = NULL, *bb = NULL;
    if (!PyArg_ParseTuple(args, "OOOOdii", &o[0], &o[1], &o[2], &o[3], &r, &metric, &upper))
        return NULL;
    if (ck_get(o[0], &b[0], 'd', 0, 1, "xa") || ck_get(o[1], &b[1], 'd', 0, 1, "ya")
        || ck_get(o[2], &b[2], 'd', 0, 1, "xb") || ck_get(o[3], &b[3], 'd', 0, 1, "yb"))
        goto done;
    if (ck_check_points(b, 4, r, "close_pairs")) goto done;
    Py_ssize_t na = ck_size(&b[0]), nb = ck_size(&b[2]);
    if (ck_check(!upper || na == nb, "close_pairs: upper needs one point set")) goto done;
    const double *xa = CK_D(b[0]), *ya = CK_D(b[1]), *xb = CK_D(b[2]), *yb = CK_D(b[3]);
    Py_ssize_t np_ = 0, cap = 0, hcap = 0;
    int nomem = 0;
    Py_BEGIN_ALLOW_THREADS
    aorder = malloc(sizeof(int64_t) * (size_t)(na > 0 ? na : 1));
    if (!aorder || ck_cells_build(&cells, xa, ya, na, xb, yb, nb, r)
        || ck_cells_sort_points(&cells, xa, ya, na, aorder))
        nomem = 1;
    /* query the points of A in cell order (memory locality), then sort the pairs by (a, b) */
    for (Py_ssize_t t = 0; t < na && !nomem; t++) {
        int64_t a = aorder[t];
        Py_ssize_t nh = ck_cells_query(&cells, xa[a], ya[a], a, upper, r, metric, &hits, &hcap);
        if (nh < 0) {
            nomem = 1;
            break;
        }
        if (np_ + nh > cap) {
            Py_ssize_t ncap = cap ? 2 * cap : 256;
            while (ncap < np_ + nh) ncap *= 2;
            int64_t *pa = realloc(ia, sizeof(int64_t) * (size_t)ncap);
            if (pa) ia = pa;
            int64_t *pb = pa ? realloc(ib, sizeof(int64_t) * (size_t)ncap) : NULL;
            if (pb) ib = pb;
            if (!pa || !pb) {
                nomem = 1;
                break;
            }
            cap = ncap;
        }
        for (Py_ssize_t k = 0; k < nh; k++) {
            ia[np_ + k] = a;
            ib[np_ + k] = cells.order[hits[k]];
        }
        np_ += nh;
    }
    if (!nomem) { /* counting sort by a, then each a's few b ascending */
        seg = calloc((size_t)na + 1, sizeof(int64_t));
        oa = malloc(sizeof(int64_t) * (size_t)(np_ > 0 ? np_ : 1));
        ob = malloc(sizeof(int64_t) * (size_t)(np_ > 0 ? np_ : 1));
        if (!seg || !oa || !ob) nomem = 1;
    }
    if (!nomem) {
        for (Py_ssize_t p = 0; p < np_; p++) seg[ia[p] + 1]++;
        for (Py_ssize_t a = 0; a < na; a++) seg[a + 1] += seg[a];
        for (Py_ssize_t p = 0; p < np_; p++) {
            int64_t q = seg[ia[p]]++;
            oa[q] = ia[p];
            ob[q] = ib[p];
        }
        Py_ssize_t lo = 0;
        for (Py_ssize_t a = 0; a < na; a++) { /* seg[a] is now the end of a's run */
            Py_ssize_t hi = (Py_ssize_t)seg[a];
            if (hi - lo > 1) qsort(ob + lo, (size_t)(hi - lo), sizeof(int64_t), ck_cmp_i64);
            lo = hi;
        }
    }
    Py_END_ALLOW_THREADS
    if (nomem) {
        PyErr_NoMemory();
        goto done;
    }
    ba = PyByteArray_FromStringAndSize((const char *)oa, (Py_ssize_t)sizeof(int64_t) * np_);
    bb = ba ? PyByteArray_FromStringAndSize((const char *)ob, (Py_ssize_t)sizeof(int64_t) * np_)
            : NULL;
    if (ba && bb) ret = PyTuple_Pack(2, ba, bb);
done:
    Py_XDECREF(ba);
    Py_XDECREF(bb);
    free(ia);
    free(ib);
    free(oa);
    free(ob);
    free(seg);
    free(aorder);
    free(hits);
    ck_cells_free(&cells);
    ck_release(b, 4);
    return ret;
}

static int64_t ck_find_root(int64_t *parent, int64_t i)
{
    while (parent[i] != i) {
        parent[i] = parent[parent[i]]; /* path halving */
        i = parent[i];
    }
    return i;
}

/* fof_labels(x[n], y[n], r, out[n]): friends-of-friends groups with linking length r
 * (sqrt(dx*dx + dy*dy) <= r, directly or through a chain); out = 1-based group ids numbered in
 * order of first appearance. */
PyObject *ck_fof_labels(PyObject *self, PyObject *args)
{
    PyObject *o[3];
    double r;
    ck_buf b[3] = {{{0}}};
    ck_cells cells = {0};
    int64_t *parent = NULL, *label = NULL, *inv = NULL, *hits = NULL;
    PyObject *ret = NULL;
    if (!PyArg_ParseTuple(args, "OOdO", &o[0], &o[1], &r, &o[2])) return NULL;
    if (ck_get(o[0], &b[0], 'd', 0, 1, "x") || ck_get(o[1], &b[1], 'd', 0, 1, "y")
        || ck_get(o[2], &b[2], 'i', 1, 1, "out"))
        goto done;
    if (ck_check_points(b, 2, r, "fof_labels")) goto done;
    Py_ssize_t n = ck_size(&b[0]);
    if (ck_check(ck_size(&b[2]) == n, "fof_labels: one label per point")) goto done;
    const double *x = CK_D(b[0]), *y = CK_D(b[1]);
    int64_t *out = CK_I(b[2]);
    Py_ssize_t hcap = 0;
    int nomem = 0;
    Py_BEGIN_ALLOW_THREADS
    /* union-find over the points' positions k in cell order (neighbours are close in memory) */
    parent = malloc(sizeof(int64_t) * (size_t)(n > 0 ? n : 1));
    label = calloc((size_t)(n > 0 ? n : 1), sizeof(int64_t));
    inv = malloc(sizeof(int64_t) * (size_t)(n > 0 ? n : 1));
    if (!parent || !label || !inv || ck_cells_build(&cells, x, y, n, x, y, n, r)) nomem = 1;
    for (Py_ssize_t k = 0; k < n && !nomem; k++) {
        parent[k] = k;
        inv[cells.order[k]] = k;
    }
    for (Py_ssize_t k = 0; k < n && !nomem; k++) {
        Py_ssize_t nh = ck_cells_query(&cells, cells.xs[k], cells.ys[k], cells.order[k], 1, r, 2,
                                       &hits, &hcap);
        if (nh < 0) {
            nomem = 1;
            break;
        }
        for (Py_ssize_t h = 0; h < nh; h++) {
            int64_t ra = ck_find_root(parent, k), rb = ck_find_root(parent, hits[h]);
            if (ra == rb) continue;
            if (ra < rb) parent[rb] = ra;
            else parent[ra] = rb;
        }
    }
    if (!nomem) { /* ids by first appearance in the input order */
        int64_t next = 0;
        for (Py_ssize_t i = 0; i < n; i++) {
            int64_t root = ck_find_root(parent, inv[i]);
            if (!label[root]) label[root] = ++next;
            out[i] = label[root];
        }
    }
    Py_END_ALLOW_THREADS
    if (nomem) {
        PyErr_NoMemory();
        goto done;
    }
    ret = Py_NewRef(Py_None);
done:
    free(parent);
    free(label);
    free(inv);
    free(hits);
    ck_cells_free(&cells);
    ck_release(b, 3);
    return ret;
}
