// Opens oneDNN's library (libdnnl.so.2 or .so.3, as the headers were) and resolves the functions
// of onednn_api.h.
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

// Opens BYOL_DNNL_LIBRARY_NAME (or `path`) and resolves what the shims need. Returns 0, or 1 with a
// message in err (the library or a symbol is missing). Call once, before any other shim call.
int byol_onednn_load(const char *path, char *err, size_t err_len) {
  if (api) return 0;
  const char *file = path && *path ? path : BYOL_DNNL_LIBRARY_NAME;
  void *lib = dlopen(file, RTLD_NOW | RTLD_LOCAL);
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
    copy_message(err, err_len, "%s has no symbol %s", file, missing);
    delete a;
    dlclose(lib);
    return 1;
  }
  // A library of the other major version (named by BYOL_DNNL_LIBRARY) lacks the API's
  // version-specific functions and fails above; this also catches one that has them all.
  if (static_cast<int>(a->dnnl_version()->major) != DNNL_VERSION_MAJOR) {
    char built[32];
    std::snprintf(built, sizeof built, "%d.x", DNNL_VERSION_MAJOR);
    copy_message(err, err_len, "%s is not oneDNN %s, which this build's shim was compiled for",
                 file, built);
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
