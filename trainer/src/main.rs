//! `flame-train`: trains flame's transformer configs from batches served by flame-stream.
use std::process::ExitCode;

use flame_trainer::train::{Args, run};

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some("convert") {
        return match flame_trainer::convert::main(&argv[2..]) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("flame-train convert: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    let args = match Args::parse_with_config_file(argv) {
        Ok(args) => args,
        Err(e) => {
            // clap's own errors (and --help, --version) print as clap prints them.
            if let Some(clap_error) = e.downcast_ref::<clap::Error>() {
                clap_error.exit();
            }
            eprintln!("flame-train: {e:#}");
            return ExitCode::from(2);
        }
    };
    if std::env::var_os("PYTORCH_CUDA_ALLOC_CONF").is_none()
        && std::env::var_os("PYTORCH_ALLOC_CONF").is_none()
    {
        // As flame's train.sh: the caching allocator maps more memory into a segment as it grows
        // instead of reserving a new one per size. libtorch reads it at the first CUDA allocation.
        // SAFETY: main has started no thread yet; nothing reads the environment concurrently.
        unsafe { std::env::set_var("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True") };
    }
    if args.deterministic && std::env::var_os("CUBLAS_WORKSPACE_CONFIG").is_none() {
        // cuBLAS reads it when it starts, so before any CUDA work: deterministic cuBLAS workspaces.
        // SAFETY: main has started no thread yet; nothing reads the environment concurrently.
        unsafe { std::env::set_var("CUBLAS_WORKSPACE_CONFIG", ":4096:8") };
    }
    if args.print_args {
        eprintln!("flame-train: {args:#?}");
    }
    if args.nproc_per_node > 1 && std::env::var_os("RANK").is_none() {
        return launch_ranks(&args);
    }
    match run(&args) {
        Ok(summary) => {
            if summary.exported {
                eprintln!("flame-train: exported to {}", summary.export.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("flame-train: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Starts `--nproc-per-node` ranks of this command and waits for them. Without `--data-endpoint` this
/// process runs the data service the ranks share (one server, one tokenizer per host, not one per
/// rank) and hands them its endpoint.
fn launch_ranks(args: &Args) -> ExitCode {
    let mut rest: Vec<String> = std::env::args().skip(1).collect();
    let mut service = None;
    if args.data_endpoint.is_none() {
        match flame_trainer::named_data::data_service(args) {
            Ok((endpoint, dir)) => {
                rest.extend(["--data-endpoint".to_string(), endpoint.to_string()]);
                service = dir;
            }
            Err(e) => {
                eprintln!("flame-train: {e:#}");
                return ExitCode::FAILURE;
            }
        }
    }
    let launched = flame_trainer::dist::launch_local(args.nproc_per_node, &rest);
    drop(service);
    match launched {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("flame-train: {e}");
            ExitCode::FAILURE
        }
    }
}
