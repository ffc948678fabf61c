/* svg.c - the similarity heatmap: rows and columns in clustering order, so
 * families show as bright blocks on the diagonal; viridis colours (readable
 * in greyscale and by colour-blind readers); labels sized to the cells. */
#include "base/util.h"
#include "base/error.h"

#include <stdlib.h>
#include <string.h>

static void put_escaped(idd_buf *b, const char *s, size_t maxchars)
{
	size_t len = strlen(s);
	if (len > maxchars) { /* keep the distinctive tail of long paths */
		idd_buf_put(b, "\xe2\x80\xa6", 3);
		s += len - (maxchars - 1);
	}
	for (; *s; s++) {
		switch (*s) {
		case '<': idd_buf_put(b, "&lt;", 4); break;
		case '>': idd_buf_put(b, "&gt;", 4); break;
		case '&': idd_buf_put(b, "&amp;", 5); break;
		case '"': idd_buf_put(b, "&quot;", 6); break;
		default:
			if ((unsigned char)*s >= 0x20)
				idd_buf_put_u8(b, (uint8_t)*s);
		}
	}
}

static void putf(idd_buf *b, const char *fmt, ...) IDD_PRINTF(2, 3);
static void putf(idd_buf *b, const char *fmt, ...)
{
	char tmp[512];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
	va_end(ap);
	if (n > 0)
		idd_buf_put(b, tmp, (size_t)IDD_MIN((size_t)n, sizeof tmp - 1));
}

/* viridis, 9 stops */
static void colour(double v, char out[8])
{
	static const unsigned char st[9][3] = {
		{68, 1, 84}, {71, 44, 122}, {59, 81, 139}, {44, 113, 142}, {33, 144, 141},
		{39, 173, 129}, {92, 200, 99}, {170, 220, 50}, {253, 231, 37}};
	if (!(v >= 0))
		v = 0;
	if (v > 1)
		v = 1;
	double x = v * 8;
	int i = (int)x;
	if (i >= 8)
		i = 7;
	double f = x - i;
	int c[3];
	for (int k = 0; k < 3; k++)
		c[k] = (int)(st[i][k] + (st[i + 1][k] - st[i][k]) * f + 0.5);
	snprintf(out, 8, "#%02x%02x%02x", c[0], c[1], c[2]);
}

char *idd_similarity_svg(const idd_similarity *s, idd_metric m, const size_t *order, size_t *len,
                         idd_error *err)
{
	size_t n = s->n;
	if (n > 2000) {
		idd_fail(err, "svg: %zu images is more than a heatmap can show (at most 2000); use csv or json", n);
		return NULL;
	}
	double cell = n ? 720.0 / (double)n : 48;
	if (cell > 48)
		cell = 48;
	if (cell < 10)
		cell = n > 300 ? 3 : 10;
	double font = cell * 0.8;
	if (font > 14)
		font = 14;
	size_t maxlab = 0;
	for (size_t i = 0; i < n; i++)
		maxlab = IDD_MAX(maxlab, strlen(s->ids[i]));
	if (maxlab > 40)
		maxlab = 40;
	double lab = font * 0.62 * (double)maxlab + 12;
	if (lab < 40)
		lab = 40;
	double top = lab + 44, left = lab + 8, grid = cell * (double)n;
	double legend_x = left + grid + 24, width = legend_x + 90;
	if (width < 620)
		width = 620; /* room for the title */
	double height = top + IDD_MAX(grid, 220.0) + 30;
	idd_buf b = {0};
	putf(&b, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
	         "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" height=\"%.0f\" "
	         "viewBox=\"0 0 %.0f %.0f\" font-family=\"DejaVu Sans, Arial, sans-serif\">\n",
	     width, height, width, height);
	putf(&b, "<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n");
	putf(&b, "<text x=\"8\" y=\"22\" font-size=\"16\" font-weight=\"bold\">imgdedup similarity: %s, "
	         "%zu images, clustered (average linkage)</text>\n",
	     m == IDD_METRIC_CONTAINMENT ? "containment (row in column)" : "jaccard", n);
	/* row labels, right-aligned left of the grid */
	for (size_t r = 0; r < n; r++) {
		putf(&b, "<text x=\"%.1f\" y=\"%.1f\" font-size=\"%.1f\" text-anchor=\"end\" "
		         "dominant-baseline=\"middle\">",
		     left - 4, top + cell * ((double)r + 0.5), font);
		put_escaped(&b, s->ids[order[r]], 40);
		putf(&b, "</text>\n");
	}
	/* column labels, vertical above the grid */
	for (size_t c = 0; c < n; c++) {
		double x = left + cell * ((double)c + 0.5), y = top - 4;
		putf(&b, "<text transform=\"translate(%.1f %.1f) rotate(-90)\" font-size=\"%.1f\" "
		         "dominant-baseline=\"middle\">",
		     x, y, font);
		put_escaped(&b, s->ids[order[c]], 40);
		putf(&b, "</text>\n");
	}
	bool values = cell >= 34, tips = n <= 100;
	for (size_t r = 0; r < n && !b.failed; r++) {
		for (size_t c = 0; c < n; c++) {
			size_t a = order[r], o = order[c];
			double v = idd_similarity_value(s, m, a, o);
			char col[8];
			colour(v, col);
			putf(&b, "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.2f\" height=\"%.2f\" fill=\"%s\"",
			     left + cell * (double)c, top + cell * (double)r, cell + 0.05, cell + 0.05, col);
			if (tips) {
				putf(&b, "><title>");
				put_escaped(&b, s->ids[a], 200);
				putf(&b, " / ");
				put_escaped(&b, s->ids[o], 200);
				putf(&b, ": %.4f</title></rect>\n", v);
			} else {
				putf(&b, "/>\n");
			}
			if (values)
				putf(&b, "<text x=\"%.1f\" y=\"%.1f\" font-size=\"%.1f\" text-anchor=\"middle\" "
				         "dominant-baseline=\"middle\" fill=\"%s\">%.2f</text>\n",
				     left + cell * ((double)c + 0.5), top + cell * ((double)r + 0.5), font * 0.85,
				     v > 0.6 ? "black" : "white", v);
		}
	}
	putf(&b, "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"none\" "
	         "stroke=\"#444\" stroke-width=\"1\"/>\n", left, top, grid, grid);
	/* colour scale: 1 at the top */
	double lh = 200;
	for (int i = 0; i < 50; i++) {
		char col[8];
		colour(1.0 - (i + 0.5) / 50.0, col);
		putf(&b, "<rect x=\"%.1f\" y=\"%.2f\" width=\"18\" height=\"%.2f\" fill=\"%s\"/>\n",
		     legend_x, top + lh * i / 50.0, lh / 50.0 + 0.3, col);
	}
	putf(&b, "<rect x=\"%.1f\" y=\"%.1f\" width=\"18\" height=\"%.1f\" fill=\"none\" stroke=\"#444\"/>\n",
	     legend_x, top, lh);
	for (int t = 0; t <= 4; t++)
		putf(&b, "<text x=\"%.1f\" y=\"%.1f\" font-size=\"12\" dominant-baseline=\"middle\">%.2f</text>\n",
		     legend_x + 24, top + lh * (1 - t / 4.0), t / 4.0);
	putf(&b, "<text x=\"%.1f\" y=\"%.1f\" font-size=\"12\">%s</text>\n", legend_x, top - 10,
	     m == IDD_METRIC_CONTAINMENT ? "containment" : "jaccard");
	putf(&b, "</svg>\n");
	idd_buf_put_u8(&b, 0);
	if (b.failed) {
		idd_buf_free(&b);
		idd_fail(err, "out of memory writing the svg");
		return NULL;
	}
	*len = b.len - 1;
	return (char *)b.data;
}
