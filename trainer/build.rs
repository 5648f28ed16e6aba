//! Link arguments for libtorch that tch's own build script cannot give a dependant's binaries
//! (../shared/notes/libtorch.md §2, §3.2): `--no-as-needed -ltorch`, so that on a GPU machine the real
//! `libtorch.so` is loaded and registers CUDA (on CPU it is the setup script's stub), and a RUNPATH to
//! `$LIBTORCH/lib` for runs here (`LD_LIBRARY_PATH` takes precedence on the GPU machine). Also compiles
//! `csrc/` (what tch does not bind, and the cubin launcher and autograd bridge of `src/kernels/`)
//! against the same headers.
fn main() {
    for file in ["csrc/shim.cpp", "csrc/kernels.cpp", "csrc/common.h"] {
        println!("cargo:rerun-if-changed={file}");
    }
    for var in ["LIBTORCH", "LIBTORCH_LIB", "LIBTORCH_INCLUDE"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    let Ok(root) = std::env::var("LIBTORCH") else {
        // torch-sys fails with its own message; nothing to add.
        return;
    };
    let include =
        std::path::Path::new(&std::env::var("LIBTORCH_INCLUDE").unwrap_or_else(|_| root.clone()))
            .join("include");
    cc::Build::new()
        .cpp(true)
        .pic(true)
        .warnings(false)
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .flag("-std=c++17")
        .flag("-D_GLIBCXX_USE_CXX11_ABI=1")
        .file("csrc/shim.cpp")
        .file("csrc/kernels.cpp")
        .compile("flameshim");
    let lib = std::path::Path::new(&std::env::var("LIBTORCH_LIB").unwrap_or(root)).join("lib");
    println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
    println!("cargo:rustc-link-arg=-ltorch");
    println!("cargo:rustc-link-arg=-Wl,--as-needed");
    println!(
        "cargo:rustc-link-arg=-Wl,--enable-new-dtags,-rpath,{}",
        lib.display()
    );
}
