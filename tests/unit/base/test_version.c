/* test_version.c - idd_version: the linked library names the version its
 * header declares, as a string and as a number built from the parts. */
#include "testutil.h"

#include <stdio.h>
#include <string.h>

static void test_version_string_and_number(void **state)
{
	(void)state;
	assert_string_equal(idd_version(), IDD_VERSION);
	char parts[64];
	snprintf(parts, sizeof parts, "%d.%d.%d", IDD_VERSION_MAJOR, IDD_VERSION_MINOR,
	         IDD_VERSION_PATCH);
	assert_string_equal(idd_version(), parts);
	assert_int_equal(idd_version_number(), IDD_VERSION_NUMBER);
	assert_int_equal(idd_version_number(),
	                 IDD_VERSION_MAJOR * 10000 + IDD_VERSION_MINOR * 100 + IDD_VERSION_PATCH);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_version_string_and_number),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
