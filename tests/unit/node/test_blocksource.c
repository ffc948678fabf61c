/* test_blocksource.c - the chain: sources asked in order, a request moves
 * on only while not filled, "damaged" is not hidden by a later "not here",
 * a source failing as a whole passes its requests on and reports why. */
#include "testutil.h"
#include "node/blocksource.h"

#include <stdlib.h>
#include <string.h>

#define BS 512u

/* A source holding the blocks whose digest's first byte is in [lo, hi];
 * `lie` hands out wrong bytes (verification fails); `down` fails whole. */
struct fake {
	unsigned char lo, hi;
	bool lie, down;
	int calls;
};

static unsigned char content(const idd_digest *d) { return d->b[1]; }

static bool fake_has(idd_block_source *s, const idd_digest *d)
{
	struct fake *f = s->priv;
	return d->b[0] >= f->lo && d->b[0] <= f->hi;
}

static int fake_read(idd_block_source *s, idd_block_req *reqs, size_t n, idd_error *err)
{
	struct fake *f = s->priv;
	f->calls++;
	if (f->down)
		return idd_fail_code(err, IDD_ENET, "%s: connection refused", s->name);
	for (size_t i = 0; i < n; i++) {
		if (!fake_has(s, &reqs[i].digest)) {
			reqs[i].status = IDD_ENOENT;
			continue;
		}
		memset(reqs[i].buf, f->lie ? 0xee : content(&reqs[i].digest), BS);
		reqs[i].status = f->lie ? IDD_ECORRUPT : IDD_OK;
		atomic_fetch_add(&s->blocks, 1);
	}
	return IDD_OK;
}

static void fake_close(idd_block_source *s)
{
	idd_block_source_fini(s);
	free(s);
}

static const struct idd_block_source_ops fake_ops = {"fake", fake_has, fake_read, fake_close};

static idd_block_source *fake(struct fake *f, const char *name)
{
	idd_block_source *s = calloc(1, sizeof *s);
	assert_int_equal(idd_block_source_init(s, &fake_ops, name, BS, NULL, NULL, NULL), IDD_OK);
	s->priv = f;
	return s;
}

static idd_digest dg(unsigned char key, unsigned char c)
{
	idd_digest d;
	memset(&d, 0x11, sizeof d);
	d.b[0] = key;
	d.b[1] = c;
	return d;
}

static void test_order_and_fallback(void **state)
{
	(void)state;
	struct fake a = {.lo = 0, .hi = 9}, b = {.lo = 5, .hi = 19, .lie = false}, c = {.lo = 0, .hi = 255};
	struct fake liar = {.lo = 10, .hi = 14, .lie = true};
	idd_block_chain ch = {.n = 0};
	ch.src[ch.n++] = fake(&a, "a");
	ch.src[ch.n++] = fake(&liar, "liar");
	ch.src[ch.n++] = fake(&b, "b");
	ch.src[ch.n++] = fake(&c, "c");
	unsigned char buf[4][BS];
	idd_block_req r[4] = {
	    {.digest = dg(3, 30), .buf = buf[0]},  /* a has it */
	    {.digest = dg(12, 31), .buf = buf[1]}, /* the liar first, then b */
	    {.digest = dg(17, 32), .buf = buf[2]}, /* b */
	    {.digest = dg(200, 33), .buf = buf[3]}, /* only c */
	};
	idd_error err;
	assert_int_equal(idd_block_chain_read(&ch, r, 4, &err), IDD_OK);
	for (int i = 0; i < 4; i++) {
		assert_int_equal(r[i].status, IDD_OK);
		assert_int_equal(buf[i][0], content(&r[i].digest));
	}
	idd_block_source_counters k;
	idd_block_source_counters_get(ch.src[0], &k);
	assert_int_equal(k.blocks, 1);
	idd_block_source_counters_get(ch.src[2], &k);
	assert_int_equal(k.blocks, 2);
	idd_block_source_counters_get(ch.src[3], &k);
	assert_int_equal(k.blocks, 1); /* asked only for what nobody before had */
	for (size_t i = 0; i < ch.n; i++)
		idd_block_source_close(ch.src[i]);
}

static void test_damage_and_failure_reported(void **state)
{
	(void)state;
	struct fake liar = {.lo = 0, .hi = 255, .lie = true}, none = {.lo = 1, .hi = 0};
	struct fake down = {.lo = 0, .hi = 255, .down = true};
	idd_block_chain ch = {.n = 0};
	ch.src[ch.n++] = fake(&liar, "liar");
	ch.src[ch.n++] = fake(&none, "none");
	unsigned char buf[BS];
	idd_block_req r = {.digest = dg(7, 1), .buf = buf};
	idd_error err;
	assert_int_equal(idd_block_chain_read(&ch, &r, 1, &err), IDD_OK);
	assert_int_equal(r.status, IDD_ECORRUPT); /* not hidden by "none" */
	idd_block_source_close(ch.src[0]);
	idd_block_source_close(ch.src[1]);

	ch.n = 0;
	ch.src[ch.n++] = fake(&down, "down");
	assert_int_equal(idd_block_chain_read(&ch, &r, 1, &err), IDD_OK);
	assert_int_equal(r.status, IDD_ENET);
	assert_int_equal(ch.failure.code, IDD_ENET);
	assert_non_null(strstr(ch.failure.msg, "refused"));
	idd_block_source_close(ch.src[0]);
}

/* The chain as deploy and serve assemble it: the sources in the order
 * given, the ones a run lacks (NULL) left out, nothing from a previous use. */
static void test_chain_of_skips_absent(void **state)
{
	(void)state;
	struct fake a = {.lo = 0, .hi = 9}, c = {.lo = 0, .hi = 255};
	idd_block_source *sa = fake(&a, "a"), *sc = fake(&c, "c");
	idd_block_chain ch;
	memset(&ch, 0x5a, sizeof ch);
	IDD_BLOCK_CHAIN_OF(&ch, NULL, sa, NULL, sc);
	assert_int_equal(ch.n, 2);
	assert_ptr_equal(ch.src[0], sa);
	assert_ptr_equal(ch.src[1], sc);
	assert_int_equal(ch.failure.code, 0);
	unsigned char buf[2][BS];
	idd_block_req r[2] = {{.digest = dg(3, 40), .buf = buf[0]}, {.digest = dg(90, 41), .buf = buf[1]}};
	idd_error err;
	assert_int_equal(idd_block_chain_read(&ch, r, 2, &err), IDD_OK);
	assert_int_equal(r[0].status, IDD_OK);
	assert_int_equal(r[1].status, IDD_OK);
	assert_int_equal(a.calls, 1);
	assert_int_equal(c.calls, 1); /* only for what a lacked */
	IDD_BLOCK_CHAIN_OF(&ch, NULL);
	assert_int_equal(ch.n, 0);
	idd_block_source_close(sa);
	idd_block_source_close(sc);
}

static void test_verify(void **state)
{
	(void)state;
	unsigned char blk[BS];
	tu_fill_random(blk, BS, 3);
	idd_hasher *h = idd_hasher_new(NULL);
	idd_digest d;
	idd_hasher_digest(h, blk, BS, &d, NULL);
	assert_true(idd_block_verify(h, blk, BS, &d));
	blk[100] ^= 1;
	assert_false(idd_block_verify(h, blk, BS, &d));
	assert_false(idd_block_verify(NULL, blk, BS, &d));
	idd_hasher_free(h);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_order_and_fallback),
	    cmocka_unit_test(test_damage_and_failure_reported),
	    cmocka_unit_test(test_chain_of_skips_absent),
	    cmocka_unit_test(test_verify),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
