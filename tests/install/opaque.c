/* opaque.c - must NOT compile: without IDD_STATIC_LINKING_ONLY a block
 * list is an opaque handle, so a program cannot depend on its layout
 * (make install-check expects the compiler to refuse this file). */
#include <imgdedup.h>

int main(void)
{
	return (int)sizeof(idd_blocklist);
}
