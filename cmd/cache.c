/* cache.c - placeholder: replaced when the command lands. */
#include "cli.h"
int cmd_cache(int argc, char **argv)
{
	(void)argc; (void)argv;
	cli_error("cache: not implemented in this build");
	return EXIT_FAIL;
}
