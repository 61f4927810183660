// CUDA graph capture and replay of the ops one backend issues (src/backend/cuda_graph.h).
// Capture runs in relaxed mode on the backend's one stream: the ops are recorded, not run.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "backend/cuda_graph.h"
#include "cuda_common.h"

struct CudaGraph {
    Backend *be;
    cudaGraph_t graph;
    cudaGraphExec_t exec;
    int capturing;
};

int backend_cuda_graph_requested(void) {
    static int noted;
    const char *v = getenv("VIT_CUDA_GRAPH");
    if (!v || !strcmp(v, "0") || !*v) return 0;
    if (!strcmp(v, "1")) return 1;
    if (!noted++) fprintf(stderr, "note: VIT_CUDA_GRAPH=%s: expected 0 or 1; running without graphs\n", v);
    return 0;
}

CudaGraph *backend_cuda_graph_create(Backend *be) {
    if (backend_cuda_device(be) < 0) {
        vit_fail("CUDA graphs: the backend is not CUDA's (a CPU run, or a profiling wrapper)");
        return NULL;
    }
    CudaGraph *g = (CudaGraph *)calloc(1, sizeof *g);
    if (!g) {
        vit_fail("CUDA graphs: out of host memory");
        return NULL;
    }
    g->be = be;
    return g;
}

static void drop(CudaGraph *g) {
    if (g->exec) cudaGraphExecDestroy(g->exec);
    if (g->graph) cudaGraphDestroy(g->graph);
    g->exec = NULL, g->graph = NULL;
}

int backend_cuda_graph_begin(CudaGraph *g) {
    CudaState *s = cuda_state(g->be);
    if (cuda_failed(s)) return VIT_ERR;
    if (g->capturing) return vit_fail("CUDA graphs: a capture is already under way");
    drop(g);
    // Relaxed: the ops may call what global mode forbids elsewhere in the process (the
    // loader's threads touch no CUDA; cuBLASLt queries its workspace without waiting).
    cudaError_t e = cudaStreamBeginCapture(s->stream, cudaStreamCaptureModeRelaxed);
    if (e != cudaSuccess) return vit_fail("CUDA graphs: cudaStreamBeginCapture: %s", cudaGetErrorString(e));
    g->capturing = 1;
    return VIT_OK;
}

int backend_cuda_graph_end(CudaGraph *g) {
    CudaState *s = cuda_state(g->be);
    if (!g->capturing) return vit_fail("CUDA graphs: no capture under way");
    g->capturing = 0;
    cudaGraph_t graph = NULL;
    cudaError_t e = cudaStreamEndCapture(s->stream, &graph);
    if (e != cudaSuccess || !graph) {
        if (graph) cudaGraphDestroy(graph);
        (void)cudaGetLastError();  // a broken capture is not a device fault: clear it
        return vit_fail("CUDA graphs: the capture broke (%s): an op waited for the host", cudaGetErrorString(e));
    }
    if (cuda_failed(s)) {  // an op failed while recording (its failure is latched)
        cudaGraphDestroy(graph);
        return VIT_ERR;
    }
    cudaGraphExec_t exec = NULL;
    e = cudaGraphInstantiateWithFlags(&exec, graph, 0);
    if (e != cudaSuccess) {
        cudaGraphDestroy(graph);
        (void)cudaGetLastError();
        return vit_fail("CUDA graphs: cudaGraphInstantiateWithFlags: %s", cudaGetErrorString(e));
    }
    g->graph = graph, g->exec = exec;
    return VIT_OK;
}

int backend_cuda_graph_ready(const CudaGraph *g) { return g && g->exec != NULL; }

int backend_cuda_graph_launch(CudaGraph *g) {
    CudaState *s = cuda_state(g->be);
    if (cuda_failed(s)) return VIT_ERR;
    if (!g->exec) return vit_fail("CUDA graphs: launch without a capture");
    return cuda_check(s, cudaGraphLaunch(g->exec, s->stream), "cudaGraphLaunch");
}

void backend_cuda_graph_destroy(CudaGraph *g) {
    if (!g) return;
    if (g->capturing) {  // leave the stream usable
        cudaGraph_t graph = NULL;
        if (cudaStreamEndCapture(cuda_state(g->be)->stream, &graph) == cudaSuccess && graph) cudaGraphDestroy(graph);
        (void)cudaGetLastError();
    }
    drop(g);
    free(g);
}
