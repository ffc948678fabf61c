/* map.c - placeholder: replaced when the command lands. */
#include "cli.h"
int cmd_map(int argc, char **argv)
{
	(void)argc; (void)argv;
	cli_error("map: not implemented in this build");
	return EXIT_FAIL;
}
