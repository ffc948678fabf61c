/* fuzz_qcow2.c - libFuzzer target: the qcow2 reader on hostile bytes.
 * Backing files resolve to the same bytes, so chains and cycles are hit. */
#include "fuzz_common.h"

static const uint8_t *cur;
static size_t cur_len;

static int backing_same(void *ctx, const char *name, idd_file **out, idd_error *err)
{
	(void)ctx;
	(void)err;
	*out = fz_mem_file(name, cur, cur_len);
	return IDD_OK;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t len)
{
	if (len < 4 || len > (1u << 22))
		return 0;
	/* Always a qcow2: the fuzzer need not find the magic. */
	uint8_t *copy = malloc(len);
	memcpy(copy, data, len);
	memcpy(copy, "QFI\xfb", 4);
	cur = copy;
	cur_len = len;
	idd_image *img;
	idd_error err;
	if (idd_image_open(fz_mem_file("fuzz.qcow2", copy, len), true, backing_same, NULL, &img, &err) == 0) {
		fz_exercise_image(img);
		idd_image_close(img);
	}
	free(copy);
	return 0;
}
