/* similarity.c - placeholder: replaced when the command lands. */
#include "cli.h"
int cmd_similarity(int argc, char **argv)
{
	(void)argc; (void)argv;
	cli_error("similarity: not implemented in this build");
	return EXIT_FAIL;
}
