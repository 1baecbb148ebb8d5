//! Task Bench port (filled in separately).

pub fn main(_args: &[String]) -> Result<(), String> {
    Err("taskbench: not built yet".into())
}
