// `vit info`: the model's size and cost, and its parameter table with official names.
#include <stdio.h>
#include <string.h>
#include "commands.h"
#include "common.h"
#include "model/params.h"
#include "util/status.h"

int cmd_info(int argc, char **argv) {
    for (int i = 0; i < argc; i++)
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            flags_print_help("info", "Prints parameter count, tokens and FLOPs per image of --model with overrides;\n"
                                     "--json prints them as one JSON object, and the tensor table otherwise.");
            return 0;
        }
    ParsedOptions p;
    ViTConfig c;
    ParamTable t;
    ParamOffsets o;
    int bad = flags_parse(&p, argc, argv) || cli_model_config(&p, NULL, &c) || params_build(&t, &o, &c);
    flags_free(&p);
    if (bad) {
        fprintf(stderr, "vit info: %s\n", vit_error());
        return 2;
    }
    double fwd = 2 * config_forward_macs(&c);
    if (p.o.json) {
        printf("{\"model\": \"%s\", \"parameters\": %zu, \"tokens\": %d, \"forward_gflops_per_image\": %.4f, "
               "\"training_gflops_per_image\": %.4f}\n",
               c.name, t.total, config_tokens(&c), fwd / 1e9, 3 * fwd / 1e9);
    } else {
        printf("model       %s: hidden %d, mlp %d, heads %d, layers %d, patch %d, image %d x %d x %d, classes %d, "
               "pre_logits %d\n",
               c.name, c.hidden, c.mlp, c.heads, c.layers, c.patch, c.image, c.image, c.channels, c.classes,
               c.representation);
        printf("parameters  %zu (%.2f M, %.1f MiB fp32)\n", t.total, t.total / 1e6, t.total * 4 / 1048576.0);
        printf("tokens      %d\n", config_tokens(&c));
        printf("forward     %.3f GFLOP per image (matrix products)\n", fwd / 1e9);
        printf("training    %.3f GFLOP per image (forward + backward = 3 x forward)\n", 3 * fwd / 1e9);
        printf("\ntensors:\n");
        for (int i = 0; i < t.count; i++) {
            const ParamEntry *e = &t.entries[i];
            char shape[64];
            int n = snprintf(shape, sizeof shape, "(");
            for (int k = 0; k < e->ndim; k++) n += snprintf(shape + n, sizeof shape - n, k ? ", %d" : "%d", e->shape[k]);
            snprintf(shape + n, sizeof shape - n, ")");
            printf("  %-70s %-20s %zu\n", e->name, shape, e->size);
        }
    }
    params_free(&t, &o);
    return 0;
}
