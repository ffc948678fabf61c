/* strerror.c - the smallest program using libimgdedup, built outside the
 * tree through `pkg-config --cflags --libs libimgdedup` (make install-check). */
#include <imgdedup.h>

#include <stdio.h>

int main(void)
{
	printf("%s\n", idd_strerror(IDD_ECORRUPT));
	return 0;
}
