/* test_digest.c - block digests, zero detection, the digest set. */
#include "testutil.h"

#include <stdlib.h>
#include <string.h>

static void hex_of(const char *in_hex, idd_digest *d)
{
	for (int i = 0; i < 32; i++) {
		unsigned v;
		sscanf(in_hex + 2 * i, "%2x", &v);
		d->b[i] = (unsigned char)v;
	}
}

static void test_sha256_known_vector(void **state)
{
	(void)state;
	idd_error err;
	idd_hasher *h = idd_hasher_new(&err);
	assert_non_null(h);
	idd_digest d, want;
	assert_int_equal(idd_hasher_digest(h, "abc", 3, &d, &err), IDD_OK);
	hex_of("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad", &want);
	assert_memory_equal(d.b, want.b, 32);
	/* the context is reused: a second digest is still right */
	assert_int_equal(idd_hasher_digest(h, "abc", 3, &d, &err), IDD_OK);
	assert_memory_equal(d.b, want.b, 32);
	idd_hasher_free(h);
}

/* The name of an image's files: the hex SHA-256 of its id. */
static void test_id_hex(void **state)
{
	(void)state;
	char hex[2 * IDD_DIGEST_SIZE + 1];
	idd_error err;
	assert_int_equal(idd_id_hex("abc", hex, &err), IDD_OK);
	assert_string_equal(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
	assert_int_equal(idd_id_hex("", hex, &err), IDD_OK);
	assert_string_equal(hex, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
}

static void test_is_zero(void **state)
{
	(void)state;
	unsigned char buf[8192] = {0};
	assert_true(idd_is_zero(buf, sizeof buf));
	assert_true(idd_is_zero(buf, 0));
	assert_true(idd_is_zero(buf, 5));
	for (size_t pos = 0; pos < sizeof buf; pos += 997) {
		buf[pos] = 1;
		assert_false(idd_is_zero(buf, sizeof buf));
		buf[pos] = 0;
	}
	buf[sizeof buf - 1] = 0x80;
	assert_false(idd_is_zero(buf, sizeof buf));
}

static void test_hash_blocks_zero_and_tail(void **state)
{
	(void)state;
	idd_error err;
	idd_hasher *h = idd_hasher_new(&err);
	const uint32_t bs = 4096;
	size_t len = 3 * bs + 100; /* last block partial: hashed zero-padded */
	unsigned char *buf = calloc(1, len);
	tu_fill_random(buf, bs, 1);              /* block 0 data */
	/* block 1 zero */
	tu_fill_random(buf + 2 * bs, bs, 2);     /* block 2 data */
	memset(buf + 3 * bs, 0xab, 100);         /* tail */
	idd_digest d[4];
	uint64_t hashed = 0;
	assert_int_equal(idd_hash_blocks(h, buf, len, bs, d, &hashed, &err), IDD_OK);
	assert_int_equal(hashed, 3 * bs);
	assert_false(idd_digest_is_zero(&d[0]));
	assert_true(idd_digest_is_zero(&d[1]));
	unsigned char *pad = calloc(1, bs);
	memcpy(pad, buf + 3 * bs, 100);
	idd_digest want;
	assert_int_equal(idd_hasher_digest(h, pad, bs, &want, &err), IDD_OK);
	assert_memory_equal(d[3].b, want.b, 32);
	/* an all-zero tail is a zero block */
	memset(buf + 3 * bs, 0, 100);
	hashed = 0;
	assert_int_equal(idd_hash_blocks(h, buf, len, bs, d, &hashed, &err), IDD_OK);
	assert_true(idd_digest_is_zero(&d[3]));
	assert_int_equal(hashed, 2 * bs);
	free(pad);
	free(buf);
	idd_hasher_free(h);
}

static void test_digest_set(void **state)
{
	(void)state;
	idd_error err;
	idd_digest_set s;
	assert_int_equal(idd_digest_set_init(&s, 0, true, &err), IDD_OK);
	const size_t n = 50000;
	idd_digest d;
	for (size_t i = 0; i < n; i++) {
		memset(&d, 0, sizeof d);
		tu_fill_random(d.b, 32, i + 1);
		bool added;
		size_t slot = idd_digest_set_add(&s, &d, &added, &err);
		assert_true(slot != (size_t)-1);
		assert_true(added);
		s.aux[slot] = i;
	}
	assert_int_equal(s.count, n);
	for (size_t i = 0; i < n; i += 7) {
		tu_fill_random(d.b, 32, i + 1);
		bool added;
		size_t slot = idd_digest_set_add(&s, &d, &added, &err);
		assert_false(added);
		assert_int_equal(s.aux[slot], i); /* aux survives growth */
		assert_int_equal(idd_digest_set_find(&s, &d), slot);
	}
	tu_fill_random(d.b, 32, n + 12345);
	assert_true(idd_digest_set_find(&s, &d) == (size_t)-1);
	assert_int_equal(s.count, n);
	idd_digest_set_free(&s);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_sha256_known_vector),
		cmocka_unit_test(test_id_hex),
		cmocka_unit_test(test_is_zero),
		cmocka_unit_test(test_hash_blocks_zero_and_tail),
		cmocka_unit_test(test_digest_set),
	};
	return cmocka_run_group_tests_name("digest", tests, NULL, NULL);
}
