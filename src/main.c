// vit: Vision Transformer training and inference. Dispatches to one subcommand.
#include <stdio.h>
#include <string.h>
#include "cli/commands.h"

const char *g_program = "vit";

static void usage(FILE *f) {
    fprintf(f,
            "usage: vit <command> [flags]\n"
            "commands:\n"
            "  train      train or fine-tune a ViT (see vit train --help)\n"
            "  info       parameter count, tokens and FLOPs of a model\n"
            "  evaluate   loss and top-1/top-5 of a checkpoint or official weights on the validation set\n"
            "  predict    top-5 classes of JPEG/PNG images\n"
            "  export     a checkpoint's weights as an official-format .npz\n"
            "  prep       raw ImageNet or image folders to TFRecord shards\n"
            "  version    version, build options, matrix library and CPU features (also vit --version)\n");
}

int main(int argc, char **argv) {
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    g_program = argv[0];
    const char *cmd = argv[1];
    if (!strcmp(cmd, "--version")) return cmd_version(argc - 2, argv + 2);
    if (!strcmp(cmd, "train")) return cmd_train(argc - 2, argv + 2);
    if (!strcmp(cmd, "info")) return cmd_info(argc - 2, argv + 2);
    if (!strcmp(cmd, "evaluate")) return cmd_evaluate(argc - 2, argv + 2);
    if (!strcmp(cmd, "export")) return cmd_export(argc - 2, argv + 2);
    if (!strcmp(cmd, "predict")) return cmd_predict(argc - 2, argv + 2);
    if (!strcmp(cmd, "prep")) return cmd_prep(argc - 2, argv + 2);
    if (!strcmp(cmd, "version")) return cmd_version(argc - 2, argv + 2);
    fprintf(stderr, "vit: unknown command '%s' (commands: train, info, evaluate, predict, export, prep, version; see vit --help)\n", cmd);
    return 2;
}
