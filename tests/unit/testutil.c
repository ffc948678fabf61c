/* testutil.c - helpers for the cmocka unit tests. */
#include "testutil.h"
#include "imgdedup.h"
#include "index/map.h"

#include <dirent.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

char *tu_mkdtemp(void)
{
	const char *t = getenv("TMPDIR");
	char *p = idd_asprintf(NULL, "%s/idd-test-XXXXXX", t && *t ? t : "/tmp");
	assert_non_null(p);
	assert_non_null(mkdtemp(p));
	return p;
}

static int rm_cb(const char *p, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st; (void)flag; (void)ftw;
	return remove(p);
}

void tu_rmtree(const char *path)
{
	if (path)
		nftw(path, rm_cb, 16, FTW_DEPTH | FTW_PHYS);
}

char *tu_write(const char *dir, const char *name, const void *data, size_t len)
{
	char *p = idd_path_join(dir, name, NULL);
	assert_non_null(p);
	FILE *f = fopen(p, "wb");
	assert_non_null(f);
	if (len)
		assert_int_equal(fwrite(data, 1, len, f), len);
	assert_int_equal(fclose(f), 0);
	tu_age(p);
	return p;
}

void tu_age(const char *path)
{
	/* an mtime ten seconds old (distinct to the nanosecond for every call):
	 * not racily clean for scan, whatever the timestamp granularity */
	struct timespec now, t[2];
	clock_gettime(CLOCK_REALTIME, &now);
	t[0] = t[1] = now;
	t[1].tv_sec -= 10;
	assert_int_equal(utimensat(AT_FDCWD, path, t, 0), 0);
}

void tu_fill_random(void *buf, size_t len, uint64_t seed)
{
	uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1;
	unsigned char *p = buf;
	for (size_t i = 0; i < len; i++) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		p[i] = (unsigned char)(x >> 24);
	}
}

void tu_flip_byte(const char *path, uint64_t off)
{
	int fd = open(path, O_RDWR);
	assert_true(fd >= 0);
	unsigned char c;
	assert_int_equal(pread(fd, &c, 1, (off_t)off), 1);
	c ^= 0xff;
	assert_int_equal(pwrite(fd, &c, 1, (off_t)off), 1);
	close(fd);
}

void tu_truncate(const char *path, uint64_t len) { assert_int_equal(truncate(path, (off_t)len), 0); }

uint64_t tu_file_size(const char *path)
{
	struct stat st;
	assert_int_equal(stat(path, &st), 0);
	return (uint64_t)st.st_size;
}

uint64_t tu_missing_bytes(const unsigned char *img, size_t len, uint64_t b0, uint64_t b1,
                          const unsigned char *have, size_t have_len)
{
	enum { BS = 4096 };
	idd_hasher *h = idd_hasher_new(NULL);
	idd_digest_set seen, hv;
	idd_digest_set_init(&seen, 64, false, NULL);
	idd_digest_set_init(&hv, 64, false, NULL);
	unsigned char blk[BS];
	for (size_t o = 0; have && o < have_len; o += BS) {
		memset(blk, 0, BS);
		memcpy(blk, have + o, IDD_MIN((size_t)BS, have_len - o));
		if (idd_is_zero(blk, BS))
			continue;
		idd_digest d;
		idd_hasher_digest(h, blk, BS, &d, NULL);
		bool added;
		idd_digest_set_add(&hv, &d, &added, NULL);
	}
	uint64_t total = 0;
	for (uint64_t b = b0; b < b1 && b * BS < len; b++) {
		size_t n = IDD_MIN((size_t)BS, len - b * BS);
		memset(blk, 0, BS);
		memcpy(blk, img + b * BS, n);
		if (idd_is_zero(blk, BS))
			continue;
		idd_digest d;
		idd_hasher_digest(h, blk, BS, &d, NULL);
		bool added;
		idd_digest_set_add(&seen, &d, &added, NULL);
		if (added && idd_digest_set_find(&hv, &d) == (size_t)-1)
			total += n;
	}
	idd_digest_set_free(&seen);
	idd_digest_set_free(&hv);
	idd_hasher_free(h);
	return total;
}

char *tu_first_file(const char *dir, const char *sub, const char *prefix)
{
	char *d = idd_path_join(dir, sub, NULL);
	DIR *dh = d ? opendir(d) : NULL;
	char *found = NULL;
	struct dirent *de;
	while (dh && (de = readdir(dh)))
		if (!strncmp(de->d_name, prefix, strlen(prefix)) && !strstr(de->d_name, ".tmp.") &&
		    (!found || strcmp(de->d_name, strrchr(found, '/') + 1) < 0)) {
			free(found);
			found = idd_path_join(d, de->d_name, NULL);
		}
	if (dh)
		closedir(dh);
	free(d);
	return found;
}

static void quiet(void *ctx, const char *msg) { (void)ctx; (void)msg; }

int tu_index_repo(const char *repo)
{
	idd_error err;
	idd_scan_opts so = {.repo = repo, .warn = quiet};
	idd_scan_stats ss;
	idd_map_opts mo = {.repo = repo, .warn = quiet};
	idd_map_stats ms;
	if (idd_scan(&so, &ss, &err) || idd_map_run(&mo, &ms, &err)) {
		fprintf(stderr, "index %s: %s\n", repo, err.msg);
		return -1;
	}
	return 0;
}

int tu_pair_repo(const char *repo, const tu_pair_spec *s, unsigned char **a, unsigned char **b)
{
	const size_t bs = 4096;
	unsigned char *ia = calloc(s->nb * bs + s->tail, 1), *ib = malloc(s->nb * bs);
	if (!ia || !ib) {
		free(ia);
		free(ib);
		fprintf(stderr, "tu_pair_repo: out of memory\n");
		return -1;
	}
	for (size_t i = 0; i < s->nb; i++)
		if (i % s->zero_every)
			tu_fill_random(ia + i * bs, bs, s->seed + i % s->pool);
	tu_fill_random(ia + s->nb * bs, s->tail, s->tail_seed);
	memcpy(ib, ia, s->nb * bs);
	for (size_t i = s->changed; i < s->changed + s->nchanged; i++)
		tu_fill_random(ib + i * bs, bs, s->changed_seed + i);
	*a = ia;
	*b = ib;
	idd_mkdir_p(repo, NULL);
	free(tu_write(repo, "a.raw", ia, s->nb * bs + s->tail));
	free(tu_write(repo, "b.raw", ib, s->nb * bs));
	return tu_index_repo(repo);
}
