// Bench tooling: llama.cpp's logits for token ids, to compare colloquy's with
// (scripts/bench/compare-logits.py builds and runs it). Never part of the
// colloquy build.
//
// Usage: llama-logits MODEL.gguf THREADS < ids.txt
// Input: one prompt per line, space-separated token ids.
// Output: per prompt, one line per position: "pos id:logit id:logit ..." with
// the TOP (64) largest logits, largest first (ties: lowest id first).
#include "llama.h"

#include <algorithm>
#include <cstdio>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

int main(int argc, char ** argv) {
    if (argc != 3) {
        std::fprintf(stderr, "usage: %s MODEL.gguf THREADS < ids.txt\n", argv[0]);
        return 2;
    }
    const int top = 64;
    llama_log_set([](ggml_log_level, const char *, void *) {}, nullptr);
    llama_backend_init();
    llama_model * model = llama_model_load_from_file(argv[1], llama_model_default_params());
    if (!model) {
        std::fprintf(stderr, "cannot load %s\n", argv[1]);
        return 1;
    }
    const int n_vocab = llama_vocab_n_tokens(llama_model_get_vocab(model));
    std::string line;
    while (std::getline(std::cin, line)) {
        std::vector<llama_token> ids;
        std::istringstream in(line);
        for (llama_token t; in >> t;) {
            ids.push_back(t);
        }
        llama_context_params cp = llama_context_default_params();
        cp.n_ctx = 1024;
        cp.n_batch = cp.n_ubatch = 1024;
        cp.n_threads = cp.n_threads_batch = std::atoi(argv[2]);
        llama_context * ctx = llama_init_from_model(model, cp);
        llama_batch batch = llama_batch_init((int) ids.size(), 0, 1);
        for (size_t i = 0; i < ids.size(); i++) {
            batch.token[i] = ids[i];
            batch.pos[i] = (llama_pos) i;
            batch.n_seq_id[i] = 1;
            batch.seq_id[i][0] = 0;
            batch.logits[i] = 1;
        }
        batch.n_tokens = (int) ids.size();
        if (llama_decode(ctx, batch) != 0) {
            std::fprintf(stderr, "decode failed\n");
            return 1;
        }
        for (size_t i = 0; i < ids.size(); i++) {
            const float * l = llama_get_logits_ith(ctx, (int) i);
            std::vector<int> order(n_vocab);
            for (int k = 0; k < n_vocab; k++) {
                order[k] = k;
            }
            std::partial_sort(order.begin(), order.begin() + top, order.end(),
                              [&](int a, int b) { return l[a] > l[b] || (l[a] == l[b] && a < b); });
            std::printf("%zu", i);
            for (int k = 0; k < top; k++) {
                std::printf(" %d:%.6f", order[k], l[order[k]]);
            }
            std::printf("\n");
        }
        std::printf("end\n");
        llama_batch_free(batch);
        llama_free(ctx);
    }
    llama_model_free(model);
    return 0;
}
