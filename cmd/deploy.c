/* deploy.c - placeholder: replaced when the command lands. */
#include "cli.h"
int cmd_deploy(int argc, char **argv)
{
	(void)argc; (void)argv;
	cli_error("deploy: not implemented in this build");
	return EXIT_FAIL;
}
