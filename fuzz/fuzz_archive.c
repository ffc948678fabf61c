/* fuzz_archive.c - libFuzzer target: archive detection, member listing
 * (our tar parser for plain tars, libarchive for compressed ones) and
 * opening the members. */
#include "fuzz_common.h"

#include <stdio.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t len)
{
	if (len > (1u << 20))
		return 0;
	static char path[64];
	if (!path[0])
		snprintf(path, sizeof path, "%s/idd-fuzz-archive-%d.tar",
		         getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp", (int)getpid());
	FILE *f = fopen(path, "wb");
	if (!f)
		abort();
	if (len && fwrite(data, 1, len, f) != len)
		abort();
	fclose(f);
	idd_archive_kind(data, len);
	idd_archive_members l;
	idd_error err;
	if (idd_archive_list(path, &l, &err) == 0) {
		for (size_t i = 0; i < l.n && i < 4; i++) {
			/* Spooling a compressed member costs its full size: keep it small. */
			if (l.v[i].streamed && len > 8192)
				continue;
			idd_image *img;
			if (idd_archive_open_member(path, &l.v[i], &img, &err) == 0) {
				fz_exercise_image(img);
				idd_image_close(img);
			}
		}
		idd_archive_members_free(&l);
	}
	unlink(path);
	return 0;
}
