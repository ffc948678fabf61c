/* test_archive.c - images inside tar, OVA, Vagrant box and compressed tars:
 * member lists and exact data offsets checked against python3's tarfile,
 * member contents against the source images. */
#include "imgtest.h"

#include <sys/stat.h>

#define DISK (3u << 20)

static char *dir;
static char *raw;

static int setup(void **state)
{
	(void)state;
	dir = tu_mkdtemp();
	raw = it_make_raw(dir, "disk.raw", DISK, 5);
	it_sh("cd %s && mkdir -p src && cp disk.raw src/disk.raw && "
	      "qemu-img convert -f raw -O qcow2 -c disk.raw src/disk.qcow2 && "
	      "qemu-img convert -f raw -O vmdk -o subformat=streamOptimized disk.raw src/disk1.vmdk && "
	      "echo '<Envelope/>' > src/appliance.ovf && echo 'SHA256(disk1.vmdk)= 00' > src/appliance.mf && "
	      "echo '{}' > src/metadata.json && echo 'Vagrant.configure' > src/Vagrantfile", dir);
	return 0;
}

static int teardown(void **state)
{
	(void)state;
	tu_rmtree(dir);
	free(dir);
	free(raw);
	return 0;
}

static char *path_for(const char *name)
{
	char *p = idd_path_join(dir, name, NULL);
	assert_non_null(p);
	return p;
}

static const idd_archive_member *find_member(const idd_archive_members *l, const char *member)
{
	for (size_t i = 0; i < l->n; i++)
		if (strcmp(l->v[i].name, member) == 0)
			return &l->v[i];
	fail_msg("member %s not listed", member);
	return NULL;
}

static void check_member(const char *archive, const idd_archive_member *m, const char *raw_path,
                         const char *format)
{
	idd_image *img;
	idd_error err;
	char *path = path_for(archive);
	if (idd_archive_open_member(path, m, &img, &err))
		fail_msg("open member %s of %s: %s", m->name, archive, err.msg);
	it_check_opened(img, m->name, raw_path, format);
	free(path);
}

/* python3 tarfile's view of each member: "name offset_data size" lines. */
static void expect_offsets_match(const char *archive, const idd_archive_members *l)
{
	char cmd[1024], line[1024];
	snprintf(cmd, sizeof cmd,
	         "python3 -c 'import tarfile,sys\n"
	         "for m in tarfile.open(sys.argv[1]):\n"
	         "  print(m.name, m.offset_data, m.size)' %s/%s", dir, archive);
	FILE *p = popen(cmd, "r");
	assert_non_null(p);
	size_t matched = 0;
	while (fgets(line, sizeof line, p)) {
		char name[900];
		unsigned long long off, size;
		assert_int_equal(sscanf(line, "%899s %llu %llu", name, &off, &size), 3);
		for (size_t i = 0; i < l->n; i++)
			if (strcmp(l->v[i].name, name) == 0) {
				assert_int_equal(l->v[i].off, off);
				assert_int_equal(l->v[i].len, size);
				matched++;
			}
	}
	assert_int_equal(pclose(p), 0);
	assert_int_equal(matched, l->n);
}

static void list(const char *archive, idd_archive_members *l)
{
	char *path = path_for(archive);
	idd_error err;
	if (idd_archive_list(path, l, &err))
		fail_msg("list %s: %s", archive, err.msg);
	free(path);
}

static void test_kind(void **state)
{
	(void)state;
	it_sh("cd %s/src && tar --format=ustar -cf ../k.tar appliance.ovf && gzip -nc ../k.tar > ../k.tgz && "
	      "xz -c ../k.tar > ../k.txz && zstd -qc ../k.tar > ../k.tzst && gzip -nc appliance.ovf > ../n.gz",
	      dir);
	const char *names[] = {"k.tar", "k.tgz", "k.txz", "k.tzst", "n.gz", "disk.raw", "src/disk.qcow2"};
	const char *want[] = {"tar", "tar.gz", "tar.xz", "tar.zst", NULL, NULL, NULL};
	for (size_t i = 0; i < IDD_ARRAY_LEN(names); i++) {
		char *p = idd_path_join(dir, names[i], NULL);
		unsigned char head[4096] = {0};
		size_t n = (size_t)IDD_MIN(tu_file_size(p), sizeof head);
		it_pread(p, 0, head, n);
		const char *k = idd_archive_kind(head, n);
		if (want[i])
			assert_string_equal(k, want[i]);
		else
			assert_null(k);
		free(p);
	}
	assert_null(idd_archive_kind((const unsigned char *)"\x1f\x8b", 2));
	assert_null(idd_archive_kind((const unsigned char *)"", 0));
}

static void test_tar_formats(void **state)
{
	(void)state;
	static const char *fmts[] = {"ustar", "gnu", "pax"};
	for (size_t f = 0; f < 3; f++) {
		/* A long directory name needs GNU long names or pax records. */
		const char *deep = f ? "images/a-rather-long-directory-name-for-testing-long-tar-names/"
		                       "and-another-level-that-pushes-past-one-hundred-chars"
		                     : "images";
		char archive[64];
		snprintf(archive, sizeof archive, "t-%s.tar", fmts[f]);
		it_sh("cd %s && rm -rf stage && mkdir -p stage/%s && cp src/* stage/%s/ && cd stage && "
		      "tar --format=%s -cf ../%s %s", dir, deep, deep, fmts[f], archive, deep);
		idd_archive_members l;
		list(archive, &l);
		assert_int_equal(l.n, 3); /* raw, qcow2, vmdk: not ovf, mf, json, Vagrantfile */
		expect_offsets_match(archive, &l);
		char m[512];
		snprintf(m, sizeof m, "%s/disk.raw", deep);
		const idd_archive_member *e = find_member(&l, m);
		assert_false(e->streamed);
		assert_int_equal(e->spool_fd, -1);
		assert_string_equal(l.kind, "tar");
		assert_string_equal(l.container, "tar");
		check_member(archive, e, raw, "raw");
		snprintf(m, sizeof m, "%s/disk.qcow2", deep);
		check_member(archive, find_member(&l, m), raw, "qcow2");
		snprintf(m, sizeof m, "%s/disk1.vmdk", deep);
		check_member(archive, find_member(&l, m), raw, "vmdk");
		idd_archive_members_free(&l);
	}
}

static void test_ova(void **state)
{
	(void)state;
	it_sh("cd %s/src && tar --format=ustar -cf ../appliance.ova appliance.ovf appliance.mf disk1.vmdk",
	      dir);
	idd_archive_members l;
	list("appliance.ova", &l);
	assert_int_equal(l.n, 1);
	assert_string_equal(l.v[0].name, "disk1.vmdk");
	assert_string_equal(l.kind, "tar");
	assert_string_equal(l.container, "ova");
	assert_false(l.v[0].streamed);
	expect_offsets_match("appliance.ova", &l);
	check_member("appliance.ova", &l.v[0], raw, "vmdk");
	idd_archive_members_free(&l);
}

static void test_compressed(void **state)
{
	(void)state;
	it_sh("cd %s/src && tar -czf ../a.tar.gz Vagrantfile disk.raw metadata.json && "
	      "tar -czf ../b.tgz ./disk.qcow2 && tar -czf ../v.box Vagrantfile disk.qcow2 metadata.json && "
	      "tar --zstd -cf ../c.tar.zst disk1.vmdk && tar -cJf ../d.tar.xz disk.raw", dir);
	static const struct {
		const char *archive, *container, *member, *format;
	} cases[] = {
		{"a.tar.gz", "tar.gz", "disk.raw", "raw"},
		{"b.tgz", "tar.gz", "disk.qcow2", "qcow2"},
		{"v.box", "box", "disk.qcow2", "qcow2"},
		{"c.tar.zst", "tar.zst", "disk1.vmdk", "vmdk"},
		{"d.tar.xz", "tar.xz", "disk.raw", "raw"},
	};
	for (size_t i = 0; i < IDD_ARRAY_LEN(cases); i++) {
		idd_archive_members l;
		list(cases[i].archive, &l);
		assert_int_equal(l.n, 1);
		assert_string_equal(l.v[0].name, cases[i].member);
		assert_string_equal(l.container, cases[i].container);
		assert_true(l.v[0].streamed);
		assert_true(l.v[0].spool_fd >= 0); /* decompressed while listing */
		check_member(cases[i].archive, &l.v[0], raw, cases[i].format);
		/* Without the listing's copy, the member is decompressed again. */
		idd_archive_member again = l.v[0];
		again.spool_fd = -1;
		check_member(cases[i].archive, &again, raw, cases[i].format);
		idd_archive_members_free(&l);
	}
}

/* A sparse member (GNU sparse map) is not contiguous in the archive: it is
 * read through libarchive instead of as a slice. */
static void test_sparse_member(void **state)
{
	(void)state;
	it_sh("cd %s && mkdir -p sp && cp --sparse=always disk.raw sp/sparse.img && "
	      "truncate -s 8M sp/sparse.img && cd sp && tar --sparse --format=gnu -cf ../sp.tar sparse.img && "
	      "cd .. && tar --sparse --format=pax -cf sp-pax.tar -C sp sparse.img", dir);
	char *want = idd_path_join(dir, "sp/sparse.img", NULL);
	const char *archives[] = {"sp.tar", "sp-pax.tar"};
	for (int i = 0; i < 2; i++) {
		idd_archive_members l;
		list(archives[i], &l);
		assert_int_equal(l.n, 1);
		assert_true(l.v[0].streamed);
		check_member(archives[i], &l.v[0], want, "raw");
		idd_archive_members_free(&l);
	}
	free(want);
}

static void test_names(void **state)
{
	(void)state;
	/* Escaping names are never images; a later duplicate replaces the earlier. */
	it_sh("cd %s && python3 -c 'import tarfile,io\n"
	      "t=tarfile.open(\"names.tar\",\"w\",format=tarfile.USTAR_FORMAT)\n"
	      "def add(n,d):\n"
	      "  i=tarfile.TarInfo(n); i.size=len(d); t.addfile(i,io.BytesIO(d))\n"
	      "add(\"../evil.img\",b\"x\"*600)\n"
	      "add(\"/abs.img\",b\"x\"*10)\n"
	      "add(\"a/../b.img\",b\"x\"*10)\n"
	      "add(\"./ok.img\",b\"first\"*100)\n"
	      "add(\"nested.tar.gz\",b\"x\"*10)\n"
	      "add(\"ok.img\",b\"second\"*100)\n"
	      "t.close()'", dir);
	idd_archive_members l;
	list("names.tar", &l);
	assert_int_equal(l.n, 1);
	assert_string_equal(l.v[0].name, "ok.img");
	idd_image *img;
	idd_error err;
	char *path = path_for("names.tar");
	assert_int_equal(idd_archive_open_member(path, &l.v[0], &img, &err), 0);
	free(path);
	unsigned char buf[6];
	assert_int_equal(img->size, 600);
	assert_int_equal(idd_image_read(img, 0, buf, 6, &err), 0);
	assert_memory_equal(buf, "second", 6);
	idd_image_close(img);
	idd_archive_members_free(&l);
}

static void test_backing_in_tar(void **state)
{
	(void)state;
	it_sh("cd %s && mkdir -p bk && cd bk && qemu-img create -q -f qcow2 base.qcow2 1M && "
	      "qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 over.qcow2 && "
	      "tar -cf ../bk.tar over.qcow2 base.qcow2", dir);
	idd_archive_members l;
	list("bk.tar", &l);
	assert_int_equal(l.n, 2);
	idd_image *img;
	idd_error err;
	char *path = path_for("bk.tar");
	assert_int_not_equal(idd_archive_open_member(path, find_member(&l, "over.qcow2"), &img, &err), 0);
	free(path);
	assert_non_null(strstr(err.msg, "backing file"));
	assert_non_null(strstr(err.msg, "self-contained"));
	idd_archive_members_free(&l);
}

static void test_malformed(void **state)
{
	(void)state;
	it_sh("cd %s/src && tar --format=ustar -cf ../m.tar appliance.ovf disk.raw disk1.vmdk && "
	      "cp ../m.tar ../cut.tar && cp ../m.tar ../sum.tar", dir);
	char *cut = idd_path_join(dir, "cut.tar", NULL), *sum = idd_path_join(dir, "sum.tar", NULL);
	tu_truncate(cut, 512 * 3 + 1000000); /* inside disk.raw's data */
	idd_archive_members l;
	idd_error err;
	assert_int_not_equal(idd_archive_list(cut, &l, &err), 0);
	assert_non_null(strstr(err.msg, "truncated tar archive"));
	assert_non_null(strstr(err.msg, "cut.tar"));
	tu_flip_byte(sum, 512 * 2 + 10); /* disk.raw's header name */
	assert_int_not_equal(idd_archive_list(sum, &l, &err), 0);
	assert_non_null(strstr(err.msg, "corrupt tar header at offset 1024"));
	assert_int_not_equal(idd_archive_list(raw, &l, &err), 0);
	assert_non_null(strstr(err.msg, "not a tar archive"));
	/* A gzip whose member data is cut short: reading the member fails. */
	it_sh("cd %s/src && tar -czf ../cut.tgz disk.raw", dir);
	char *cutgz = idd_path_join(dir, "cut.tgz", NULL);
	tu_truncate(cutgz, tu_file_size(cutgz) / 2);
	if (idd_archive_list(cutgz, &l, &err) == 0) {
		assert_int_equal(l.n, 1);
		idd_image *img;
		idd_archive_member m = l.v[0];
		m.spool_fd = -1;
		assert_int_not_equal(idd_archive_open_member(cutgz, &m, &img, &err), 0);
		idd_archive_members_free(&l);
	}
	assert_non_null(strstr(err.msg, "cut.tgz"));
	free(cutgz);
	free(cut);
	free(sum);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_kind),
		cmocka_unit_test(test_tar_formats),
		cmocka_unit_test(test_ova),
		cmocka_unit_test(test_compressed),
		cmocka_unit_test(test_sparse_member),
		cmocka_unit_test(test_names),
		cmocka_unit_test(test_backing_in_tar),
		cmocka_unit_test(test_malformed),
	};
	return cmocka_run_group_tests(tests, setup, teardown);
}
