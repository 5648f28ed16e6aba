//! Link arguments for libtorch that tch's own build script cannot give a dependant's binaries
//! (../shared/notes/libtorch.md §2, §3.2): `--no-as-needed -ltorch`, so that on a GPU machine the real
//! `libtorch.so` is loaded and registers CUDA (on CPU it is the setup script's stub), and a RUNPATH to
//! `$LIBTORCH/lib` for runs here (`LD_LIBRARY_PATH` takes precedence on the GPU machine).
fn main() {
    for var in ["LIBTORCH", "LIBTORCH_LIB"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    let Ok(root) = std::env::var("LIBTORCH_LIB").or_else(|_| std::env::var("LIBTORCH")) else {
        // torch-sys fails with its own message; nothing to add.
        return;
    };
    let lib = std::path::Path::new(&root).join("lib");
    println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
    println!("cargo:rustc-link-arg=-ltorch");
    println!("cargo:rustc-link-arg=-Wl,--as-needed");
    println!(
        "cargo:rustc-link-arg=-Wl,--enable-new-dtags,-rpath,{}",
        lib.display()
    );
}
