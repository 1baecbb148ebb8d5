//! Scopes: construction, intersection, subsets, key/value specifications, and the execution
//! scope of a task (compute ∩ result ∩ chunk scopes).

use dagger::prelude::*;
use dagger::{
    current_processor, register_scope_key, tochunk, Chunk, NodeId, ProcessorId, ProcessorKind,
    ScopeError, ScopeSpec, WorkerId,
};

fn whereami() -> ProcessorId {
    current_processor()
}

fn t(w: u32, i: u32) -> Scope {
    Scope::exact(ProcessorId::thread(WorkerId(w), i))
}

#[test]
fn algebra() {
    let any = Scope::any();
    let def = Scope::default();
    assert!(def.is_subset(&any));
    assert!(!any.is_subset(&def));
    assert!(t(0, 1).is_subset(&Scope::worker(0)));
    assert!(!t(0, 1).is_subset(&Scope::worker(1)));
    assert!(Scope::worker(0).is_subset(&any));
    assert_eq!(any.constrain(&Scope::worker(3)), Scope::worker(3));
    assert_eq!(Scope::worker(0).constrain(&t(0, 2)), t(0, 2));
    let invalid = Scope::worker(0).constrain(&Scope::worker(1));
    assert!(invalid.is_invalid());
    assert!(invalid
        .to_string()
        .contains("no processor is in both `worker 0` and `worker 1`"));
    assert!(t(0, 1).constrain(&t(0, 2)).is_invalid());
    assert!(
        invalid.is_subset(&t(0, 1)),
        "the empty scope is a subset of everything"
    );
    // union and intersection distribute
    let u = t(0, 0).union(&t(1, 0));
    assert_eq!(u.constrain(&Scope::worker(1)), t(1, 0));
    assert!(t(0, 0).is_subset(&u) && t(1, 0).is_subset(&u) && !t(2, 0).is_subset(&u));
    // processor type narrows, and conflicts with a different kind's exact processor
    let threads = Scope::processor_type::<dagger::ThreadProc>();
    assert_eq!(threads.constrain(&t(0, 3)), t(0, 3));
    struct Gpu;
    assert!(Scope::processor_type::<Gpu>()
        .constrain(&t(0, 3))
        .is_invalid());
    // node scopes
    assert!(Scope::node(NodeId(0))
        .constrain(&Scope::node(NodeId(1)))
        .is_invalid());
    assert!(!Scope::node(NodeId(0))
        .constrain(&Scope::worker(2))
        .is_invalid());
    // empty unions are errors
    assert!(matches!(
        Scope::union_of(Vec::new()),
        Err(ScopeError::EmptyUnion { .. })
    ));
    assert!(matches!(
        Scope::worker(0).threads([]),
        Err(ScopeError::EmptyUnion { .. })
    ));
    // display
    assert_eq!(
        Scope::worker(2).thread(1).to_string(),
        "ThreadProc(worker 2, 1)"
    );
    assert_eq!(Scope::any().to_string(), "any");
    assert_eq!(Scope::default().to_string(), "default");
    assert_eq!(
        Scope::processor_type::<Gpu>().to_string(),
        "processor type Gpu"
    );
}

#[test]
fn key_value_specifications() {
    let s = Scope::spec().worker(1).thread(2).build().unwrap();
    assert_eq!(s, t(1, 2));
    let s = Scope::spec().workers([1, 2]).build().unwrap();
    assert_eq!(s, Scope::worker(1).union(&Scope::worker(2)));
    let s = Scope::spec().threads([0, 1]).build().unwrap();
    // thread 0 or 1 on any worker
    assert!(t(5, 1).is_subset(&s) && !t(5, 2).is_subset(&s));
    assert!(matches!(Scope::spec().build(), Err(ScopeError::Empty)));
    let err = Scope::spec().key("tpu", 1u32).build().unwrap_err();
    assert!(err.to_string().contains("unknown scope key `tpu`"), "{err}");
    assert!(err.to_string().contains("threads"), "{err}");
    assert!(matches!(
        Scope::spec().key("worker", "x").build(),
        Err(ScopeError::InvalidValue { .. })
    ));
    assert!(matches!(
        Scope::spec().workers([]).build(),
        Err(ScopeError::EmptyUnion { .. })
    ));
}

struct Fpga;

fn fpga_scope(spec: &ScopeSpec) -> Result<Scope, ScopeError> {
    let fpgas = spec.ints("fpga")?.unwrap_or_default();
    let base = match spec.ints("worker")? {
        Some(w) => Scope::worker(w[0] as u32),
        None => Scope::any(),
    };
    Scope::union_of(fpgas.into_iter().map(|i| {
        base.constrain(&Scope::processor_type::<Fpga>())
            .constrain(&Scope::index(i as u32))
    }))
}

fn low_precedence(_: &ScopeSpec) -> Result<Scope, ScopeError> {
    Err(ScopeError::Custom("low precedence key must not win".into()))
}

#[test]
fn custom_keys_with_precedence() {
    register_scope_key("fpga", 1, fpga_scope);
    register_scope_key("zone", -1, low_precedence);
    let s = Scope::spec()
        .key("fpga", vec![0u32, 1])
        .worker(0)
        .build()
        .unwrap();
    let kind = ProcessorKind::of::<Fpga>();
    let p0 = ProcessorId {
        worker: WorkerId(0),
        kind,
        index: 0,
    };
    assert!(Scope::exact(p0).is_subset(&s));
    // "worker" (precedence 0) beats "zone" (-1)
    let s = Scope::spec().worker(3).key("zone", "eu").build().unwrap();
    assert_eq!(s, Scope::worker(3));
    let err = Scope::spec()
        .key("fpga", Vec::<u32>::new())
        .build()
        .unwrap_err();
    assert!(matches!(err, ScopeError::EmptyUnion { .. }));
}

#[test]
fn execution_scope_is_compute_and_result_and_chunk_scopes() {
    let ctx = Context::builder().threads(3).build().unwrap();
    ctx.enter(|| {
        // result scope narrows where the task runs
        let r = spawn!(whereami(); result_scope = t(0, 2));
        assert_eq!(r.fetch().unwrap(), ProcessorId::thread(WorkerId(0), 2));
        // compute scope takes precedence over scope
        let r = spawn!(whereami(); scope = t(0, 0), compute_scope = t(0, 1));
        assert_eq!(r.fetch().unwrap(), ProcessorId::thread(WorkerId(0), 1));
        // a chunk argument narrows the scope to its own
        let c: Chunk<u32> = Chunk::with_scope(7, t(0, 1));
        fn with_chunk(x: &u32) -> (u32, ProcessorId) {
            (*x, current_processor())
        }
        let r = spawn!(with_chunk(&c));
        assert_eq!(r.fetch().unwrap(), (7, ProcessorId::thread(WorkerId(0), 1)));
        // the intersection of all three
        let both = Scope::worker(0).threads([1, 2]).unwrap();
        let r = spawn!(with_chunk(&c); scope = both);
        assert_eq!(r.fetch().unwrap().1, ProcessorId::thread(WorkerId(0), 1));
        // contradictory: scheduling error naming the scopes
        let err = spawn!(with_chunk(&c); scope = t(0, 2)).fetch().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Scheduling);
        assert!(err.to_string().contains("ThreadProc(worker 0, 2)"), "{err}");
        assert!(err.to_string().contains("ThreadProc(worker 0, 1)"), "{err}");
        // a result scope is passed on to consumers of the result
        let pinned = spawn!(whereami(); result_scope = t(0, 2));
        let after = spawn!(consume(&pinned));
        assert_eq!(after.fetch().unwrap(), ProcessorId::thread(WorkerId(0), 2));
        // chunks made by tochunk can be used anywhere
        let free = tochunk(1u32);
        assert!(free.scope().is_any());
        assert_eq!(spawn!(with_chunk(&free)).fetch().unwrap().0, 1);
    });
}

fn consume(_: &ProcessorId) -> ProcessorId {
    current_processor()
}

#[test]
fn results_live_where_they_were_computed() {
    let ctx = Context::builder().threads(2).build().unwrap();
    ctx.enter(|| {
        let a = spawn!(whereami(); scope = t(0, 1));
        a.wait();
        assert_eq!(a.processor(), Some(ProcessorId::thread(WorkerId(0), 1)));
        let c = a.clone().into_chunk().unwrap();
        assert_eq!(c.processor(), ProcessorId::thread(WorkerId(0), 1));
        assert_eq!(c.fetch().unwrap(), ProcessorId::thread(WorkerId(0), 1));
    });
}

#[test]
fn mutable_pins_its_value_to_one_processor() {
    let ctx = Context::builder().threads(2).build().unwrap();
    ctx.enter(|| {
        let a = dagger::mutable(
            Scope::default(),
            || std::sync::Mutex::new(Vec::<u32>::new()),
        )
        .unwrap();
        let b = dagger::mutable(
            Scope::default(),
            || std::sync::Mutex::new(Vec::<u32>::new()),
        )
        .unwrap();
        assert_ne!(a.processor(), b.processor(), "successive values spread out");
        let pushes: Vec<DTask<ProcessorId>> = (0..20)
            .map(|i| {
                let a = a.clone();
                dagger::spawn_with(Options::new().scope(a.scope()), move || {
                    a.fetch_ref().unwrap().lock().unwrap().push(i);
                    current_processor()
                })
            })
            .collect();
        for p in &pushes {
            assert_eq!(p.fetch().unwrap(), a.processor());
        }
        assert_eq!(a.fetch_ref().unwrap().lock().unwrap().len(), 20);
        let err = dagger::mutable(Scope::worker(5), || 1u8).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Scheduling, "{err}");
    });
}
