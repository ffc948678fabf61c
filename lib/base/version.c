/* version.c - which library is linked (the header says which was compiled against). */
#include "base/util.h"

const char *idd_version(void)
{
	return IDD_VERSION;
}

unsigned idd_version_number(void)
{
	return IDD_VERSION_NUMBER;
}
