//! dagger's benchmark binary.
//!
//! ```text
//! cargo run --release -p dagger-bench -- <scenario> [--threads N] [--runs R] [--n N]
//! cargo run --release -p dagger-bench -- taskbench [Task Bench flags]
//! ```
//!
//! Scenarios: `independent`, `chain`, `tree`, `fib`, `memory`, `scale`, `idle`, `all`.
//! Every scenario prints one JSON object per line with at least `scenario`, `system`, `tasks`,
//! `seconds`, `us_per_task` and `workers` (0: one process). Timed scenarios run `--runs`
//! times (default 7) after one warm-up, alternating dagger and its baseline, and report the
//! median; `runs` lists every measurement.

mod json;
mod scenarios;
mod sys;
mod taskbench;

use std::process::ExitCode;

/// Settings shared by every scenario.
#[derive(Clone, Debug)]
pub struct Config {
    pub threads: usize,
    pub runs: usize,
    pub n: Option<usize>,
}

fn usage() -> &'static str {
    "usage: dagger-bench <independent|chain|tree|fib|memory|scale|idle|all> [--threads N] [--runs R] [--n N]\n       dagger-bench taskbench [-steps N -width N -type T -kernel K -iter N ...] [metg]"
}

fn parse(args: &[String]) -> Result<Config, String> {
    let mut cfg = Config {
        threads: 2,
        runs: 7,
        n: None,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = |name: &str| -> Result<usize, String> {
            it.next()
                .ok_or_else(|| format!("{name} needs a value"))?
                .parse::<usize>()
                .map_err(|_| format!("{name} needs a positive number"))
        };
        match a.as_str() {
            "--threads" => cfg.threads = value("--threads")?.max(1),
            "--runs" => cfg.runs = value("--runs")?.max(1),
            "--n" => cfg.n = Some(value("--n")?.max(1)),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(cfg)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(scenario) = args.first() else {
        eprintln!("{}", usage());
        return ExitCode::from(2);
    };
    let result = if scenario == "taskbench" {
        taskbench::main(&args[1..])
    } else {
        parse(&args[1..]).and_then(|cfg| scenarios::run(scenario, &cfg))
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dagger-bench: {e}\n{}", usage());
            ExitCode::from(2)
        }
    }
}
