// Opens libdnnl.so.2 and resolves the functions of onednn_api.h.
#include "onednn_api.h"

#include <dlfcn.h>

namespace byol_onednn {
Api *api = nullptr;
}

using namespace byol_onednn;

namespace {
template <typename F> bool resolve(void *lib, const char *name, F &slot) {
  slot = reinterpret_cast<F>(dlsym(lib, name));
  return slot != nullptr;
}
} // namespace

extern "C" {

// Opens libdnnl.so.2 (or `path`) and resolves what the shims need. Returns 0, or 1 with a
// message in err (the library or a symbol is missing). Call once, before any other shim call.
int byol_onednn_load(const char *path, char *err, size_t err_len) {
  if (api) return 0;
  void *lib = dlopen(path && *path ? path : "libdnnl.so.2", RTLD_NOW | RTLD_LOCAL);
  if (!lib) {
    copy_message(err, err_len, "%s%s", dlerror(), "");
    return 1;
  }
  auto *a = new Api();
  bool ok = true;
  const char *missing = nullptr;
#define BYOL_DNNL_RESOLVE(name) \
  if (ok && !resolve(lib, #name, a->name)) { ok = false; missing = #name; }
  BYOL_DNNL_FUNCTIONS(BYOL_DNNL_RESOLVE)
  BYOL_DNNL_RESOLVE(omp_set_num_threads)
#undef BYOL_DNNL_RESOLVE
  if (!ok) {
    copy_message(err, err_len, "%s has no symbol %s", path && *path ? path : "libdnnl.so.2",
                 missing);
    delete a;
    dlclose(lib);
    return 1;
  }
  if (a->dnnl_engine_create(&a->engine, dnnl_cpu, 0) != dnnl_success) {
    copy_message(err, err_len, "%s%s", "oneDNN could not create its CPU engine", "");
    delete a;
    dlclose(lib);
    return 1;
  }
  api = a; // the library stays open for the life of the process
  return 0;
}

} // extern "C"
