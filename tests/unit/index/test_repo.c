/* test_repo.c - index/repo: which files are images (names, --include
 * patterns), the walk (index directory left out, symlinks and special files
 * ignored, a stable order), archive members as entries, and backing-file
 * resolution (relative to the naming image, confined to the repository,
 * recorded as a chain). */
#include "imgtest.h"

#include <sys/stat.h>
#include <sys/types.h>

static char *dir;  /* scratch: holds repo/ and things outside it */
static char *repo;

static void sh_in_repo(const char *cmd)
{
	it_sh("cd %s && %s", repo, cmd);
}

static int setup(void **state)
{
	(void)state;
	dir = tu_mkdtemp();
	repo = idd_path_join(dir, "repo", NULL);
	assert_int_equal(mkdir(repo, 0755), 0);
	return 0;
}

static int teardown(void **state)
{
	(void)state;
	tu_rmtree(dir);
	free(dir);
	free(repo);
	return 0;
}

static void test_name_matches(void **state)
{
	(void)state;
	static const char *const yes[] = {"a.raw", "a.img", "a.qcow2", "a.qcow", "a.ova", "a.box",
	                                  "a.tar", "a.tar.gz", "a.tgz", "a.tar.zst", "a.tar.xz",
	                                  "weird name.raw"};
	static const char *const no[] = {"a.vmdk", "a.txt", "raw", ".raw", ".tar.gz", "a.raw.bak",
	                                 "a.RAW", "a.vhd", ""};
	for (size_t i = 0; i < IDD_ARRAY_LEN(yes); i++)
		if (!idd_repo_name_matches(yes[i], NULL, 0))
			fail_msg("'%s' should name an image", yes[i]);
	for (size_t i = 0; i < IDD_ARRAY_LEN(no); i++)
		if (idd_repo_name_matches(no[i], NULL, 0))
			fail_msg("'%s' should not name an image", no[i]);
	const char *inc[] = {"*.vhd", "disk-[0-9]"};
	assert_true(idd_repo_name_matches("a.vhd", inc, 2));
	assert_true(idd_repo_name_matches("disk-7", inc, 2));
	assert_false(idd_repo_name_matches("disk-x", inc, 2));
	assert_true(idd_repo_name_matches("a.raw", inc, 2)); /* includes add, never replace */
}

static void expect_ids(const idd_repo_list *l, const char *const *ids, size_t n)
{
	for (size_t i = 0; i < l->n && i < n; i++)
		if (strcmp(l->v[i].id, ids[i]) != 0)
			fail_msg("entry %zu is '%s', expected '%s'", i, l->v[i].id, ids[i]);
	assert_int_equal(l->n, n);
}

static void test_walk(void **state)
{
	(void)state;
	sh_in_repo("for f in a.raw b.img c.qcow2 d.qcow e.ova f.box g.tar h.tar.gz i.tgz j.tar.zst "
	           "k.tar.xz notes.txt disk.vmdk .raw raw custom.vhd; do echo $f > $f; done && "
	           "mkdir -p a sub/deeper .imgdedup idx empty && echo x > a/x.raw && "
	           "echo z > sub/z.raw && echo y > sub/deeper/y.img && echo i > .imgdedup/cat.raw && "
	           "echo q > idx/q.raw && ln -s a.raw link.raw && ln -s sub linkdir && "
	           "ln -s ../../outside.raw out.raw && mkfifo fifo.raw");
	idd_repo_list l;
	idd_error err;
	char *idx = idd_path_join(repo, "idx", NULL);
	assert_int_equal(idd_repo_walk(repo, idx, NULL, 0, &l, NULL, NULL, &err), 0);
	/* Names sorted within each directory, depth first: "a/" sorts before
	 * "a.raw" because the walk compares names, not paths.  Left out: the
	 * index (by name and as the index_dir given), symlinks to files and to
	 * directories, a FIFO, and names that are not images. */
	static const char *const want[] = {
		"a/x.raw", "a.raw", "b.img", "c.qcow2", "d.qcow", "e.ova", "f.box", "g.tar",
		"h.tar.gz", "i.tgz", "j.tar.zst", "k.tar.xz", "sub/deeper/y.img", "sub/z.raw",
	};
	expect_ids(&l, want, IDD_ARRAY_LEN(want));
	for (size_t i = 0; i < l.n; i++) {
		const idd_repo_entry *e = &l.v[i];
		char *p = idd_path_join(repo, e->id, NULL);
		assert_string_equal(e->path, p);
		struct stat st;
		assert_int_equal(lstat(p, &st), 0);
		assert_int_equal(e->dev, (uint64_t)st.st_dev);
		assert_int_equal(e->ino, (uint64_t)st.st_ino);
		assert_int_equal(e->size, (uint64_t)st.st_size);
		assert_int_equal(e->mtime_ns, idd_ts_ns(st.st_mtim));
		assert_null(e->member);
		assert_string_equal(e->container, "");
		free(p);
	}
	idd_repo_list_free(&l);
	assert_null(l.v);
	assert_int_equal(l.n, 0);

	/* With --include, and an index directory elsewhere: idx/ is walked,
	 * .imgdedup stays out by name. */
	const char *inc[] = {"*.vhd"};
	assert_int_equal(idd_repo_walk(repo, NULL, inc, 1, &l, NULL, NULL, &err), 0);
	static const char *const want2[] = {
		"a/x.raw", "a.raw", "b.img", "c.qcow2", "custom.vhd", "d.qcow", "e.ova", "f.box",
		"g.tar", "h.tar.gz", "i.tgz", "idx/q.raw", "j.tar.zst", "k.tar.xz", "sub/deeper/y.img",
		"sub/z.raw",
	};
	expect_ids(&l, want2, IDD_ARRAY_LEN(want2));
	idd_repo_list_free(&l);

	/* The same tree walked twice: the same list (ids are stable). */
	idd_repo_list l2;
	assert_int_equal(idd_repo_walk(repo, idx, NULL, 0, &l, NULL, NULL, &err), 0);
	assert_int_equal(idd_repo_walk(repo, idx, NULL, 0, &l2, NULL, NULL, &err), 0);
	assert_int_equal(l.n, l2.n);
	for (size_t i = 0; i < l.n; i++)
		assert_string_equal(l.v[i].id, l2.v[i].id);
	idd_repo_list_free(&l);
	idd_repo_list_free(&l2);
	free(idx);
	sh_in_repo("rm -rf ./* .imgdedup .raw");
}

static void test_walk_errors(void **state)
{
	(void)state;
	idd_repo_list l;
	idd_error err = {{0}, 0};
	char *missing = idd_path_join(dir, "no-such-repo", NULL);
	assert_int_not_equal(idd_repo_walk(missing, NULL, NULL, 0, &l, NULL, NULL, &err), 0);
	assert_int_equal(err.code, IDD_ENOENT);
	assert_non_null(strstr(err.msg, "no-such-repo"));
	free(missing);
	char *file = tu_write(dir, "plain-file", "x", 1);
	assert_int_not_equal(idd_repo_walk(file, NULL, NULL, 0, &l, NULL, NULL, &err), 0);
	assert_non_null(strstr(err.msg, "not a directory"));
	free(file);
	/* A tree deeper than the walk goes: refused with a message, not a
	 * stack overflow. */
	it_sh("cd %s && mkdir deep && cd deep && for i in $(seq 70); do mkdir d && cd d; done && "
	      "echo x > a.raw", dir);
	char *deep = idd_path_join(dir, "deep", NULL);
	assert_int_not_equal(idd_repo_walk(deep, NULL, NULL, 0, &l, NULL, NULL, &err), 0);
	assert_non_null(strstr(err.msg, "deeper than 64"));
	free(deep);
}

static void test_archive_entries(void **state)
{
	(void)state;
	char *raw = it_make_raw(repo, "disk.raw", 1u << 20, 21);
	sh_in_repo("tar --format=ustar -cf app.ova disk.raw && tar -czf app.tar.gz disk.raw && "
	           "mv disk.raw ../disk.want");
	free(raw);
	char *want = idd_path_join(dir, "disk.want", NULL);
	idd_repo_list files, members;
	idd_error err;
	assert_int_equal(idd_repo_walk(repo, NULL, NULL, 0, &files, NULL, NULL, &err), 0);
	assert_int_equal(files.n, 2);
	for (size_t i = 0; i < files.n; i++) {
		const idd_repo_entry *a = &files.v[i];
		if (idd_repo_list_archive(a, &members, &err))
			fail_msg("%s: %s", a->id, err.msg);
		assert_int_equal(members.n, 1);
		const idd_repo_entry *m = &members.v[0];
		char *id = idd_asprintf(NULL, "%s/disk.raw", a->id);
		assert_string_equal(m->id, id);
		free(id);
		assert_string_equal(m->path, a->path);
		assert_string_equal(m->member, "disk.raw");
		/* The member carries the archive's identity: a change to it
		 * re-reads the member. */
		assert_int_equal(m->dev, a->dev);
		assert_int_equal(m->ino, a->ino);
		assert_int_equal(m->size, a->size);
		assert_int_equal(m->mtime_ns, a->mtime_ns);
		assert_int_equal(m->ctime_ns, a->ctime_ns);
		assert_int_equal(m->member_len, 1u << 20);
		bool gz = strcmp(a->id, "app.tar.gz") == 0;
		assert_string_equal(m->container, gz ? "tar.gz" : "ova");
		assert_int_equal(m->streamed, gz);
		assert_int_equal(m->spooled, gz); /* decompressed while listing, held by the entry */
		if (!gz)
			assert_int_equal(m->member_off, 512);
		idd_image *img;
		if (idd_repo_open_image(repo, m, &img, &err))
			fail_msg("open %s: %s", m->id, err.msg);
		it_check_opened(img, m->id, want, "raw");
		idd_repo_list_free(&members); /* closes the spooled copy */
	}
	idd_repo_list_free(&files);
	free(want);
	sh_in_repo("rm -f app.ova app.tar.gz");
}

static void chain_expect(const idd_chain *c, const char *const *paths, size_t n)
{
	assert_int_equal(c->n, n);
	for (size_t i = 0; i < n; i++) {
		assert_string_equal(c->v[i].path, paths[i]);
		char *p = idd_path_join(repo, paths[i], NULL);
		struct stat st;
		assert_int_equal(stat(p, &st), 0);
		assert_int_equal(c->v[i].ino, (uint64_t)st.st_ino);
		assert_int_equal(c->v[i].size, (uint64_t)st.st_size);
		free(p);
	}
}

static int open_chain(const char *id, idd_chain *chain, idd_image **img, idd_error *err)
{
	idd_repo_entry e = {0};
	char *p = idd_path_join(repo, id, NULL);
	e.path = p;
	int rc = idd_repo_open_image_chain(repo, &e, chain, img, err);
	free(p);
	return rc;
}

/* Backing names resolve against the directory of the image naming them
 * (qemu's rule), never outside the repository. */
static void test_backing_rules(void **state)
{
	(void)state;
	char *base = it_make_raw(repo, "base.raw", 1u << 20, 31);
	free(base);
	sh_in_repo("mkdir -p images sub && mv base.raw images/ && "
	           "qemu-img create -q -u -f qcow2 -b images/base.raw -F raw mid.qcow2 1M && "
	           "qemu-io -f qcow2 -c 'write -P 0x33 0 64k' mid.qcow2 >/dev/null && "
	           "qemu-img create -q -u -f qcow2 -b ../mid.qcow2 -F qcow2 sub/top.qcow2 1M && "
	           "qemu-io -f qcow2 -c 'write -P 0x44 128k 4k' sub/top.qcow2 >/dev/null && "
	           "qemu-img convert -O raw sub/top.qcow2 ../top.want");
	char *want = idd_path_join(dir, "top.want", NULL);
	/* sub/top.qcow2 names ../mid.qcow2 (from sub/), which names
	 * images/base.raw (from the repository root, mid's directory). */
	idd_chain chain = {0};
	idd_image *img;
	idd_error err;
	if (open_chain("sub/top.qcow2", &chain, &img, &err))
		fail_msg("%s", err.msg);
	it_check_opened(img, "sub/top.qcow2", want, "qcow2");
	static const char *const recorded[] = {"mid.qcow2", "images/base.raw"};
	chain_expect(&chain, recorded, 2);
	assert_true(idd_chain_unchanged(repo, chain.v, chain.n));
	sh_in_repo("sleep 0.01 && touch images/base.raw");
	assert_false(idd_chain_unchanged(repo, chain.v, chain.n));
	idd_chain_free(&chain);
	assert_int_equal(chain.n, 0);

	/* An absolute name inside the repository, and a symlink inside it to a
	 * file inside it: allowed, recorded by the real path. */
	it_sh("cd %s && ln -s images/base.raw alias.raw && "
	      "qemu-img create -q -u -f qcow2 -b %s/images/base.raw -F raw abs.qcow2 1M && "
	      "qemu-img create -q -u -f qcow2 -b alias.raw -F raw via-link.qcow2 1M", repo, repo);
	static const char *const base_only[] = {"images/base.raw"};
	assert_int_equal(open_chain("abs.qcow2", &chain, &img, &err), 0);
	chain_expect(&chain, base_only, 1);
	idd_image_close(img);
	idd_chain_free(&chain);
	assert_int_equal(open_chain("via-link.qcow2", &chain, &img, &err), 0);
	chain_expect(&chain, base_only, 1);
	idd_image_close(img);
	idd_chain_free(&chain);

	/* Outside: by "..", by an absolute path, through a symlink. */
	it_sh("cd %s && echo outside > outside.raw && cd repo && ln -s ../outside.raw escape.raw && "
	      "qemu-img create -q -u -f qcow2 -b ../outside.raw -F raw up.qcow2 1M && "
	      "qemu-img create -q -u -f qcow2 -b %s/outside.raw -F raw absout.qcow2 1M && "
	      "qemu-img create -q -u -f qcow2 -b escape.raw -F raw link-out.qcow2 1M && "
	      "qemu-img create -q -u -f qcow2 -b images/missing.raw -F raw gone.qcow2 1M", dir, dir);
	static const char *const refused[] = {"up.qcow2", "absout.qcow2", "link-out.qcow2"};
	for (size_t i = 0; i < IDD_ARRAY_LEN(refused); i++) {
		char *p = idd_path_join(repo, refused[i], NULL);
		it_expect_open_error(repo, p, "outside the repository");
		it_expect_open_error(repo, p, refused[i]); /* names the image asking */
		free(p);
	}
	char *p = idd_path_join(repo, "gone.qcow2", NULL);
	it_expect_open_error(repo, p, "images/missing.raw");
	free(p);
	free(want);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_name_matches),
		cmocka_unit_test(test_walk),
		cmocka_unit_test(test_walk_errors),
		cmocka_unit_test(test_archive_entries),
		cmocka_unit_test(test_backing_rules),
	};
	return cmocka_run_group_tests(tests, setup, teardown);
}
