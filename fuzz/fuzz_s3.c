/* fuzz_s3.c - libFuzzer target: what imgdedup reads from an object store
 * and from peers, all of it untrusted: ListObjectsV2 pages, S3 error
 * bodies, a shared credentials file, and a peer's cache index payload.
 *
 * The first input byte picks the parser, the rest is its input:
 *   0, 1   a listing page (bit 0: keys url-encoded, as imgdedup asks)
 *   2      an error body (<Code>, <Message>)
 *   3      a credentials file, profiles "default" and "ci"
 *   4      a cache index payload (what a peer's PEER/index holds)
 */
#include "fuzz_common.h"
#include "base/s3.h"
#include "node/cache.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1)
		return 0;
	unsigned mode = data[0] % 5;
	const char *body = (const char *)data + 1;
	size_t len = size - 1;
	idd_error err;
	switch (mode) {
	case 0:
	case 1: {
		idd_s3_page pg;
		if (idd_s3_list_parse("fuzz", body, len, mode == 1, &pg, &err) == 0) {
			for (size_t i = 0; i < pg.n; i++)
				if (!pg.v[i].key || strlen(pg.v[i].key) > 1024)
					abort(); /* keys are bounded and NUL-free */
			if (pg.truncated && !pg.next_token)
				abort();
			idd_s3_page_free(&pg);
		}
		break;
	}
	case 2: {
		char code[64], msg[256];
		idd_s3_error_parse(body, len, code, sizeof code, msg, sizeof msg);
		if (strlen(code) >= sizeof code || strlen(msg) >= sizeof msg)
			abort();
		break;
	}
	case 3: {
		static const char *const profiles[] = {"default", "ci"};
		for (int i = 0; i < 2; i++) {
			char *ak, *sk, *tok;
			if (idd_s3_credentials_parse("fuzz", body, len, profiles[i], &ak, &sk, &tok, &err) == 0) {
				if (!ak || !sk || !*ak || !*sk)
					abort();
				free(ak);
				free(sk);
				free(tok);
			}
		}
		break;
	}
	case 4: {
		idd_cache *c = calloc(1, sizeof *c);
		if (!c)
			return 0;
		idd_cache_index_parse("fuzz", body, len, c, &err);
		idd_cache_close(c);
		break;
	}
	}
	return 0;
}
