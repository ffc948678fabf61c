/* fuzz_vmdk.c - libFuzzer target: the VMDK reader on hostile bytes. */
#include "fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t len)
{
	if (len < 4 || len > (1u << 22))
		return 0;
	uint8_t *copy = malloc(len);
	memcpy(copy, data, len);
	/* Mostly sparse extents; keep the descriptor-file path reachable too. */
	if (copy[0] != '#')
		memcpy(copy, "KDMV", 4);
	idd_image *img;
	idd_error err;
	if (idd_image_open(fz_mem_file("fuzz.vmdk", copy, len), true, NULL, NULL, &img, &err) == 0) {
		fz_exercise_image(img);
		idd_image_close(img);
	}
	free(copy);
	return 0;
}
