/* main.c - imgdedup: dispatch to one subcommand per file. */
#include "cli.h"

#include <stdio.h>
#include <string.h>

static const struct {
	const char *name;
	int (*fn)(int, char **);
	const char *summary;
} commands[] = {
	{"scan", cmd_scan, "hash every block of every image in a repository (incremental)"},
	{"similarity", cmd_similarity, "pairwise similarity matrix of the images"},
	{"map", cmd_map, "write a compact block map per image"},
	{"pack", cmd_pack, "keep a compressed copy of the distinct blocks beside the index"},
	{"deploy", cmd_deploy, "materialise an image from its map, a local cache and the repository"},
	{"serve", cmd_serve, "export images over NBD, read on demand through the node cache"},
	{"cache", cmd_cache, "list or garbage-collect a node cache"},
	{"ls", cmd_ls, "list the indexed images"},
	{"info", cmd_info, "details of one indexed image"},
	{"verify", cmd_verify, "check every index file (and with --deep, the images)"},
	{"publish", cmd_publish, "copy the index into an object store, where nodes read it"},
	{"profile", cmd_profile, "publish a recorded boot profile into the index, or remove one"},
};

static void usage(FILE *f)
{
	fprintf(f, "usage: imgdedup COMMAND [OPTIONS] ...\n\ncommands:\n");
	for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
		fprintf(f, "  %-11s %s\n", commands[i].name, commands[i].summary);
	fprintf(f, "\n'imgdedup COMMAND --help' shows a command's options; man imgdedup has the rest.\n");
}

static int run(int argc, char **argv)
{
	if (argc < 2) {
		usage(stderr);
		return EXIT_USAGE;
	}
	if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
		usage(stdout);
		return EXIT_OK;
	}
	if (!strcmp(argv[1], "--version")) {
		printf("imgdedup %s\n", idd_version());
		return EXIT_OK;
	}
	for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++) {
		if (!strcmp(argv[1], commands[i].name)) {
			/* getopt names argv[0] in its messages: "imgdedup scan: ..." */
			char prog[64];
			snprintf(prog, sizeof prog, "imgdedup %s", commands[i].name);
			argv[1] = prog;
			return commands[i].fn(argc - 1, argv + 1);
		}
	}
	cli_error("unknown command '%s'", argv[1]);
	usage(stderr);
	return EXIT_USAGE;
}

int main(int argc, char **argv)
{
	cli_stdout_init();
	/* a write error anywhere on stdout is exit status 1 (one line naming it) */
	return cli_stdout_close(run(argc, argv));
}
