//! Property test: random task graphs, run eagerly and lazily on two threads with random
//! scopes and priorities, give the same results as a sequential evaluation.

use dagger::prelude::*;
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Op {
    Leaf(i64),
    Add(i64),
    Mul(i64),
    Fail,
}

#[derive(Clone, Debug)]
struct Node {
    op: Op,
    inputs: Vec<usize>,
    pin: Option<u32>,
    priority: i32,
}

fn graph() -> impl Strategy<Value = Vec<Node>> {
    (1usize..48).prop_flat_map(|n| {
        proptest::collection::vec(
            (
                prop_oneof![
                    4 => any::<i8>().prop_map(|c| Op::Leaf(c as i64)),
                    4 => any::<i8>().prop_map(|c| Op::Add(c as i64)),
                    2 => any::<i8>().prop_map(|c| Op::Mul(c as i64)),
                    1 => Just(Op::Fail),
                ],
                proptest::collection::vec(any::<prop::sample::Index>(), 0..4),
                prop_oneof![3 => Just(None), 1 => Just(Some(0u32)), 1 => Just(Some(1u32))],
                -2i32..3,
            ),
            n,
        )
        .prop_map(|raw| {
            raw.into_iter()
                .enumerate()
                .map(|(i, (op, picks, pin, priority))| {
                    let inputs = if i == 0 || matches!(op, Op::Leaf(_)) {
                        Vec::new()
                    } else {
                        picks.iter().map(|p| p.index(i)).collect()
                    };
                    Node {
                        op,
                        inputs,
                        pin,
                        priority,
                    }
                })
                .collect()
        })
    })
}

/// `None` when the node fails (itself or through an input).
fn sequential(nodes: &[Node]) -> Vec<Option<i64>> {
    let mut out: Vec<Option<i64>> = Vec::new();
    for n in nodes {
        let ins: Option<Vec<i64>> = n.inputs.iter().map(|&i| out[i]).collect();
        out.push(ins.and_then(|ins| apply(&n.op, &ins).ok()));
    }
    out
}

fn apply(op: &Op, ins: &[i64]) -> Result<i64, String> {
    let s = ins.iter().fold(0i64, |a, b| a.wrapping_add(*b));
    match op {
        Op::Leaf(c) => Ok(*c),
        Op::Add(c) => Ok(s.wrapping_add(*c)),
        Op::Mul(c) => Ok(s.wrapping_mul(2).wrapping_sub(*c)),
        Op::Fail => Err("planned failure".to_string()),
    }
}

fn node0(op: Op) -> Result<i64, String> {
    apply(&op, &[])
}
fn node1(op: Op, a: &i64) -> Result<i64, String> {
    apply(&op, &[*a])
}
fn node2(op: Op, a: &i64, b: &i64) -> Result<i64, String> {
    apply(&op, &[*a, *b])
}
fn node3(op: Op, a: &i64, b: &i64, c: i64) -> Result<i64, String> {
    apply(&op, &[*a, *b, c])
}

fn options(n: &Node) -> Options {
    let mut o = Options::new().priority(n.priority).name(match n.op {
        Op::Fail => "fail",
        _ => "node",
    });
    if let Some(t) = n.pin {
        o = o.scope(Scope::worker(0).thread(t));
    }
    o
}

fn eager(nodes: &[Node]) -> Vec<DTask<i64>> {
    let mut tasks: Vec<DTask<i64>> = Vec::new();
    for n in nodes {
        let op = n.op.clone();
        let o = options(n);
        let t = match n.inputs.as_slice() {
            [] => spawn!(node0(op)?; options = o),
            [a] => spawn!(node1(op, &tasks[*a])?; options = o),
            [a, b] => spawn!(node2(op, &tasks[*a], &tasks[*b])?; options = o),
            [a, b, c] => spawn!(node3(op, &tasks[*a], &tasks[*b], tasks[*c].clone())?; options = o),
            _ => unreachable!(),
        };
        tasks.push(t);
    }
    tasks
}

fn lazy(nodes: &[Node]) -> Vec<Thunk<i64>> {
    let mut thunks: Vec<Thunk<i64>> = Vec::new();
    for n in nodes {
        let op = n.op.clone();
        let o = options(n);
        let t = match n.inputs.as_slice() {
            [] => delayed!(node0(op)?; options = o),
            [a] => delayed!(node1(op, &thunks[*a])?; options = o),
            [a, b] => delayed!(node2(op, &thunks[*a], &thunks[*b])?; options = o),
            [a, b, c] => {
                delayed!(node3(op, &thunks[*a], &thunks[*b], thunks[*c].clone())?; options = o)
            }
            _ => unreachable!(),
        };
        thunks.push(t);
    }
    thunks
}

fn check(expected: &[Option<i64>], got: Vec<Result<i64, TaskError>>) -> Result<(), TestCaseError> {
    for (i, (e, g)) in expected.iter().zip(got).enumerate() {
        match (e, g) {
            (Some(v), Ok(w)) => prop_assert_eq!(*v, w, "node {}", i),
            (None, Err(err)) => {
                prop_assert_eq!(err.root().task_name(), Some("fail"), "node {}: {}", i, err);
                prop_assert_eq!(err.message(), "planned failure");
            }
            (e, g) => prop_assert!(false, "node {}: expected {:?}, got {:?}", i, e, g),
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn random_graphs_match_a_sequential_run(nodes in graph()) {
        let ctx = Context::builder().threads(2).build().unwrap();
        let expected = sequential(&nodes);
        ctx.enter(|| {
            let tasks = eager(&nodes);
            check(&expected, tasks.iter().map(|t| t.fetch()).collect())?;
            let thunks = lazy(&nodes);
            let got = thunks.iter().map(collect).collect();
            check(&expected, got)
        })?;
    }
}
