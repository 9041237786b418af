//! The job queue and its bookkeeping: a job accepted once, a busy policy not scheduled again,
//! the schedule kept across restarts, a cancel before a job's turn, and the tags a snapshot gets.

use super::*;

/// Keeps the state dir and the job queue's receiver alive for the test's duration.
#[allow(dead_code, reason = "held only to be dropped at the end of the test")]
struct Held(tempfile::TempDir, mpsc::Receiver<JobRequest>);

fn agent() -> (Held, Arc<Agent>) {
    let dir = tempfile::tempdir().unwrap();
    let state = StateDir::open(&dir.path().join("state")).unwrap();
    let (agent, rx) =
        Agent::new(state, Arc::new(crate::scheduler::SystemClock::default()), dir.path().join("hooks"));
    let plan = pb::Plan {
        version: 1,
        repositories: vec![],
        policies: vec![pb::PlanPolicy {
            id: "p1".into(),
            schedule: Some(pb::Schedule { interval_seconds: 3600, ..Default::default() }),
            ..Default::default()
        }],
    };
    agent.set_plan(plan).unwrap();
    (Held(dir, rx), agent)
}

fn job(id: Uuid) -> JobRequest {
    JobRequest { job_id: id, policy_id: "p1".into(), trigger: pb::TriggerKind::RunNow, window_end: None }
}

#[test]
fn a_policy_with_a_job_queued_is_not_scheduled_again() {
    let (_d, agent) = agent();
    let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
    assert!(agent.submit(job(a)));
    assert!(!agent.submit(job(a)), "the same job is accepted once");
    assert!(agent.submit(job(b)));
    assert!(agent.due_jobs().is_empty(), "busy");
    agent.done_with("p1");
    assert!(agent.due_jobs().is_empty(), "one job still queued");
    agent.done_with("p1");
    assert_eq!(agent.due_jobs().len(), 1);
    // The schedule survives a restart of the agent.
    let (again, _rx) =
        Agent::new(agent.state.clone(), Arc::new(crate::scheduler::SystemClock::default()), "/x".into());
    assert!(again.due_jobs().is_empty());
}

#[tokio::test]
async fn a_queued_job_cancelled_before_its_turn_ends_cancelled_without_running() {
    let (_d, agent) = agent();
    let id = Uuid::now_v7();
    assert!(agent.submit(job(id)));
    agent.cancel(id);
    let finished = agent.run_job(&job(id)).await.unwrap();
    assert_eq!(finished.outcome, pb::JobOutcome::Cancelled as i32);
    assert_eq!(agent.spool.pending().len(), 1, "the result is spooled");
    agent.cancel(Uuid::now_v7()); // unknown jobs are ignored
}

#[test]
fn snapshots_carry_the_policy_and_the_machine_as_tags() {
    let (_d, agent) = agent();
    {
        let mut plan = agent.plan.write().unwrap();
        let plan = plan.as_mut().unwrap();
        plan.repositories.push(pb::PlanRepository {
            id: "r".into(),
            url: "https://store.example/r".into(),
            restic_id: "ab".repeat(32),
            repository_password: "pw".into(),
            ..Default::default()
        });
        plan.policies[0].repository_id = "r".into();
        plan.policies[0].tags = vec!["finance".into()];
    }
    let (_, req, _) = agent.prepare("p1", Uuid::nil()).unwrap();
    assert!(req.tags.contains(&"cofre-policy:p1".to_string()));
    assert!(req.tags.iter().any(|t| t.starts_with("cofre-machine:")));
    assert!(req.tags.contains(&"finance".to_string()));
    assert!(req.lock.record.is_some());
}
