//! The kernel's workflow driver: it holds every unfinished run, folded from
//! its stream, and moves each one as the log tells it what happened — a
//! step's task ended, a person decided, a sub-workflow run ended, a timer or
//! a deadline came — by appending what the run decides next in one batch
//! (see [`crate::workflow::log`]). Runs hold no task slot and no thread
//! while they wait: a run is a few values in this driver's map.
//!
//! A work step costs one commit: the move that schedules its task also
//! claims the task's first attempt for this kernel, and the task hands its
//! end back here (a [`TaskEnding`]) to be committed in the run's next move,
//! beside the step's output and what follows it. An end that cannot ride
//! a move (the run's move is refused, the kernel is stopping) is recorded
//! by the task alone, and reaches the run through the log as any other.
//!
//! Every kernel sharing a log drives every run; the run stream's expected
//! version lets one of them record each move, and the others read the run
//! again. A kernel that starts takes the unfinished runs from the store's
//! projection and records first what they missed while no kernel ran (the
//! ends of their tasks, timers that came due: those fire then, and their
//! events say how late).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use uuid::Uuid;

use crate::event::{EventEnvelope, NewEvent, SystemEvent};
use crate::orchestrator::{EndSink, Orchestrator, TaskEnding};
use crate::store::{AppendReceipt, Cursor, EventStore, ExpectedVersion, StoreError, TaskFilter};
use crate::task::{TaskRecord, TaskStatus};
use crate::workflow::log::{self, Stored, WorkflowError};
use crate::workflow::run::{Run, RunEnd, RunEvent, RunOrigin, StepState};

/// Unfinished runs read per page while a kernel starts.
const RECOVERY_PAGE: usize = 256;

/// Times in a row a run's move is tried again after another writer moved
/// it first, before it waits for a tick.
const CONFLICTS: usize = 8;

/// What a run is told before it next moves.
enum Note {
    /// An event to record (an outcome the run missed, a sub-run's end).
    Event(RunEvent),
    /// A step's task ended (the step it ran is found when the run moves:
    /// the move that scheduled it may still have been in flight).
    TaskEnded(Uuid, Result<serde_json::Value, String>),
    /// A step task run here ended, its end not yet recorded: the move
    /// records it.
    Ending(TaskEnding),
}

/// One run's move: what it decided, and the batch recording it against
/// the run stream's `version`.
pub(super) struct Move {
    decision: log::Decision,
    batch: Vec<crate::event::NewEvent>,
    version: u64,
    /// The step tasks the batch submits, their first attempts claimed for
    /// this kernel, to run here once it is stored.
    submitted: Vec<TaskRecord>,
    /// The task ends the batch records, with their places in it.
    endings: Vec<(TaskEnding, u64)>,
    /// When the batch was stored (until then, when it was made).
    stored: std::time::Instant,
}

/// How long a run whose move failed on the store waits to try again.
const RETRY_AFTER: chrono::TimeDelta = chrono::TimeDelta::seconds(1);

/// The runs a kernel drives.
pub(super) struct Driver {
    store: Arc<dyn EventStore>,
    /// Runs the step tasks this kernel's moves submit.
    orchestrator: Orchestrator,
    /// Unfinished runs, as their streams hold them.
    runs: HashMap<Uuid, Stored>,
    /// The run each outstanding task (or sub-workflow run) belongs to.
    tasks: HashMap<Uuid, Uuid>,
    /// Runs to move, with what to report to them when they next move.
    pending: HashMap<Uuid, Vec<Note>>,
    /// The runs of `pending` with no move in flight, in the order they
    /// came (each once): what the next [`Driver::flush`] moves.
    ready: VecDeque<Uuid>,
    /// The newest version of a run's stream seen in the log while a move
    /// of it was in flight (another writer's event may be among them).
    seen: HashMap<Uuid, u64>,
    /// Runs whose last move failed on the store, and when to try again.
    retry: HashMap<Uuid, DateTime<Utc>>,
    /// Moves being appended, and the run each one moves.
    appends: JoinSet<(Move, Result<AppendReceipt, StoreError>)>,
    in_flight: HashMap<tokio::task::Id, Uuid>,
    /// The runs with a move in flight.
    moving: HashSet<Uuid>,
    /// The earliest timer or approval deadline of each held run that has
    /// one.
    deadlines: HashMap<Uuid, DateTime<Utc>>,
    /// Moves in a row another writer got in first, by run.
    conflicts: HashMap<Uuid, usize>,
    /// Ends of the step tasks started here, waiting to be recorded with
    /// their runs' next moves.
    endings: (EndSink, mpsc::UnboundedReceiver<TaskEnding>),
    /// Step tasks claimed for this kernel by moves, by run, until they run
    /// here: the kernel's loop must not take them over as interrupted.
    claimed: HashMap<Uuid, Uuid>,
    /// Claimed step tasks whose cancellation the orchestrator was told of
    /// before they were handed over (see [`Orchestrator::cancel_claimed`]).
    cancelled_early: HashSet<Uuid>,
    /// Step tasks being handed to the orchestrator, by stored move; each
    /// answers with the tasks it handed over.
    adoptions: JoinSet<Vec<Uuid>>,
}

/// What moves runs on besides the log (see [`Driver::answered`]).
pub(super) enum Answer {
    /// A move's append was answered (boxed: it holds the move).
    Appended(Box<Appended>),
    /// A step task run here ended, its end to be recorded with its run's
    /// next move.
    Ending(TaskEnding),
    /// Step tasks claimed here were handed to the orchestrator.
    Adopted(Vec<Uuid>),
}

/// A move's answer, as its append task ends.
pub(super) type Appended =
    Result<(tokio::task::Id, (Move, Result<AppendReceipt, StoreError>)), tokio::task::JoinError>;

impl Driver {
    /// A driver holding no run yet.
    pub(super) fn new(store: Arc<dyn EventStore>, orchestrator: Orchestrator) -> Self {
        Self {
            store,
            orchestrator,
            runs: HashMap::new(),
            tasks: HashMap::new(),
            pending: HashMap::new(),
            ready: VecDeque::new(),
            seen: HashMap::new(),
            retry: HashMap::new(),
            appends: JoinSet::new(),
            in_flight: HashMap::new(),
            moving: HashSet::new(),
            deadlines: HashMap::new(),
            conflicts: HashMap::new(),
            endings: mpsc::unbounded_channel(),
            claimed: HashMap::new(),
            cancelled_early: HashSet::new(),
            adoptions: JoinSet::new(),
        }
    }

    /// Whether task `task` was claimed for this kernel by a move and is
    /// about to run here.
    pub(super) fn claims(&self, task: Uuid) -> bool {
        self.claimed.contains_key(&task)
    }

    /// Notes that the orchestrator was told of claimed task `task`'s
    /// cancellation before its hand-over, so that it is told to forget it
    /// once the hand-over is done.
    pub(super) fn cancelled_before_hand_over(&mut self, task: Uuid) {
        self.cancelled_early.insert(task);
    }

    /// Stops taking task ends to record: the kernel is stopping and moves
    /// no run. Ends waiting, and any sent from now on, are declined: their
    /// tasks record them alone.
    pub(super) fn stop(&mut self) {
        // Step tasks not yet handed over stay claimed in the log, unrun:
        // the next kernel records them interrupted and runs them again.
        self.adoptions.abort_all();
        self.endings.1.close();
        while self.endings.1.try_recv().is_ok() {}
        for notes in self.pending.values_mut() {
            notes.retain(|note| !matches!(note, Note::Ending(_)));
        }
    }

    /// Takes every unfinished run the store lists, records what each
    /// missed, and moves it; how many it took. A run that cannot be read
    /// is left (and logged): it stops no kernel.
    pub(super) async fn recover(&mut self) -> Result<usize, StoreError> {
        let mut after = Cursor::START;
        let mut taken = 0;
        loop {
            let page = self
                .store
                .workflows(TaskFilter::Unfinished, after, RECOVERY_PAGE)
                .await?;
            for record in &page.items {
                if self.take(record.id).await {
                    taken += 1;
                }
            }
            self.flush().await;
            match page.next {
                Some(next) => after = next,
                None => return Ok(taken),
            }
        }
    }

    /// Reads held run `id` again (another writer moved it); if that fails,
    /// keeps the copy it has and tries again soon.
    async fn reread(&mut self, id: Uuid) {
        if let Err(e) = self.load(id).await {
            self.failed(id, &format!("cannot read it again: {e}"));
        }
    }

    /// Reads run `id` from its stream and queues it with what it missed;
    /// whether it is held.
    async fn take(&mut self, id: Uuid) -> bool {
        match self.load(id).await {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(run = %id, error = %e, "workflow run cannot be read; not driven");
                false
            }
        }
    }

    /// Holds run `id` as its stream has it, queued with the outcomes it
    /// missed (or forgotten, if it has ended).
    async fn load(&mut self, id: Uuid) -> Result<(), WorkflowError> {
        let (stored, missed) = self.read(id).await?;
        let ended = stored.run.end.is_some();
        self.hold(stored);
        if ended {
            self.finished(id);
        } else {
            self.enqueue(id, missed.into_iter().map(Note::Event).collect());
        }
        Ok(())
    }

    /// Run `id` as its stream holds it (the copy held brought up to date,
    /// else read whole), and the outcomes of its tasks it has not recorded.
    async fn read(&self, id: Uuid) -> Result<(Stored, Vec<RunEvent>), WorkflowError> {
        let store = self.store.as_ref();
        let stored = match self.runs.get(&id) {
            Some(held) => match log::catch_up(store, held).await {
                Ok(stored) => stored,
                // Its events do not fit the copy: read it whole.
                Err(WorkflowError::Run(_)) => log::load(store, id).await?,
                Err(e) => return Err(e),
            },
            None => log::load(store, id).await?,
        };
        let missed = log::missed(self.store.as_ref(), &stored.run).await?;
        Ok((stored, missed))
    }

    /// Keeps `stored` and indexes its outstanding tasks and its deadline.
    fn hold(&mut self, stored: Stored) {
        let id = stored.run.id;
        self.runs.insert(id, stored);
        self.indexed(id);
    }

    /// Indexes held run `id`'s outstanding tasks and its next deadline, as
    /// it holds them now.
    fn indexed(&mut self, id: Uuid) {
        let Some(stored) = self.runs.get(&id) else {
            return;
        };
        for (_, _, task) in stored.run.outstanding() {
            self.tasks.insert(task, id);
        }
        let deadline = stored
            .run
            .steps
            .values()
            .filter_map(|state| match state {
                StepState::Asking { deadline } => Some(*deadline),
                StepState::Waiting { due } => Some(*due),
                _ => None,
            })
            .min();
        match deadline {
            Some(at) => self.deadlines.insert(id, at),
            None => self.deadlines.remove(&id),
        };
    }

    /// Forgets ended run `id`, and reports its end to the run whose step
    /// it ran, if any.
    fn finished(&mut self, id: Uuid) {
        let Some(stored) = self.runs.remove(&id) else {
            return;
        };
        self.tasks.retain(|_, run| *run != id);
        self.retry.remove(&id);
        self.deadlines.remove(&id);
        let Some(RunOrigin::Parent { run, step, item }) = &stored.run.origin else {
            return;
        };
        let outcome = match &stored.run.end {
            Some(RunEnd::Completed(output)) => RunEvent::StepCompleted {
                step: step.clone(),
                item: *item,
                output: output.clone(),
            },
            Some(RunEnd::Failed(error)) => RunEvent::StepFailed {
                step: step.clone(),
                item: *item,
                error: format!("sub-workflow run {id}: {error}"),
            },
            Some(RunEnd::Cancelled(by)) => RunEvent::StepFailed {
                step: step.clone(),
                item: *item,
                error: format!("sub-workflow run {id} was cancelled by {by}"),
            },
            None => return,
        };
        if self.runs.contains_key(run) {
            let run = *run;
            self.enqueue(run, vec![Note::Event(outcome)]);
        }
    }

    /// Takes in one event of the log: a run's event recorded elsewhere, or
    /// the end of a step's task.
    pub(super) async fn observe(&mut self, record: &EventEnvelope, event: &SystemEvent) {
        if let SystemEvent::WorkflowRecorded { run, event } = event {
            self.observe_run(*run, record.stream_version, event).await;
            self.flush().await;
        } else if let Some((task, done)) = log::task_end(event) {
            self.task_ended(task, done).await;
        }
    }

    /// Takes in the end of a step's task, as the log shows it.
    async fn task_ended(&mut self, task: Uuid, done: Result<serde_json::Value, String>) {
        let Some(run) = self.tasks.get(&task).copied() else {
            return;
        };
        self.enqueue(run, vec![Note::TaskEnded(task, done)]);
        self.flush().await;
    }

    /// Takes in the end of a step task run here, to record with its run's
    /// next move (declined if the task belongs to no run held here).
    async fn take_ending(&mut self, ending: TaskEnding) {
        let Some(run) = self.tasks.get(&ending.task).copied() else {
            return;
        };
        self.enqueue(run, vec![Note::Ending(ending)]);
        self.flush().await;
    }

    /// Takes in event number `version` of run `id`'s stream.
    async fn observe_run(&mut self, id: Uuid, version: u64, event: &RunEvent) {
        if self.moving.contains(&id) {
            // Its own move, or another writer's event: sorted out when the
            // move is answered.
            let seen = self.seen.entry(id).or_default();
            *seen = (*seen).max(version);
            return;
        }
        let Some(stored) = self.runs.get_mut(&id) else {
            // A run this kernel does not hold: new (another process started
            // it), or ended.
            if version == 1 && self.take(id).await {
                return;
            }
            return;
        };
        if version <= stored.version {
            return; // recorded here, or seen already
        }
        if version > stored.version + 1 || stored.run.apply(event).is_err() {
            // Missed some: read it again.
            self.reread(id).await;
            return;
        }
        stored.version = version;
        let ended = stored.run.end.is_some();
        self.indexed(id);
        if ended {
            self.finished(id);
        } else if matches!(event, RunEvent::ApprovalDecided { .. }) {
            // A person's decision: nobody else moves the run on.
            self.enqueue(id, Vec::new());
        }
    }

    /// When run `id` next needs moving without any event: after a failed
    /// move, when it is tried again; else a timer's or an approval's
    /// deadline. Never while a move of it is in flight (its answer moves
    /// it on).
    fn due(&self, id: Uuid) -> Option<DateTime<Utc>> {
        if self.moving.contains(&id) {
            return None;
        }
        self.retry
            .get(&id)
            .or_else(|| self.deadlines.get(&id))
            .copied()
    }

    /// The runs that may come due without any event: those with a retry
    /// or a deadline.
    fn timed(&self) -> impl Iterator<Item = Uuid> + '_ {
        self.retry
            .keys()
            .chain(
                self.deadlines
                    .keys()
                    .filter(|id| !self.retry.contains_key(id)),
            )
            .copied()
    }

    /// When a run next needs moving without any event (see [`Driver::due`]).
    pub(super) fn next_due(&self) -> Option<DateTime<Utc>> {
        self.timed().filter_map(|id| self.due(id)).min()
    }

    /// Moves every run that is due.
    pub(super) async fn tick(&mut self) {
        let now = Utc::now();
        let due: Vec<Uuid> = self
            .timed()
            .filter(|id| self.due(*id).is_some_and(|at| at <= now))
            .collect();
        for id in due {
            self.retry.remove(&id);
            self.enqueue(id, Vec::new());
        }
        self.flush().await;
    }

    /// Queues run `id` to move, with `notes` to report to it; a run with a
    /// move in flight keeps them until that move is answered.
    fn enqueue(&mut self, id: Uuid, notes: Vec<Note>) {
        match self.pending.entry(id) {
            std::collections::hash_map::Entry::Occupied(mut held) => held.get_mut().extend(notes),
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(notes);
                if !self.moving.contains(&id) {
                    self.ready.push_back(id);
                }
            }
        }
    }

    /// Moves every queued run whose last move is not in flight: each move's
    /// append is sent at once, beside the others' (they share commits),
    /// and answered later through [`Driver::answered`]; a run's next events
    /// wait for its move in flight.
    async fn flush(&mut self) {
        let round: Vec<(Uuid, Vec<Note>)> = std::mem::take(&mut self.ready)
            .into_iter()
            .filter_map(|id| Some((id, self.pending.remove(&id)?)))
            .collect();
        for (id, pending) in round {
            let Some(mut prepared) = self.prepare(id, pending).await else {
                continue;
            };
            let (store, batch) = (self.store.clone(), std::mem::take(&mut prepared.batch));
            let endings = std::mem::take(&mut prepared.endings);
            let expected = ExpectedVersion::Exact(prepared.version);
            let task = self.appends.spawn(async move {
                let result = store.append(batch, expected).await;
                prepared.stored = std::time::Instant::now();
                // The tasks whose ends it records hear at once, whether or
                // not this kernel's loop takes the answer in (stopping, it
                // does not); refused, they record their ends alone.
                if let Ok(receipt) = &result {
                    for (ending, at) in endings {
                        ending.recorded(receipt.first_seq + at);
                    }
                }
                (prepared, result)
            });
            self.in_flight.insert(task.id(), id);
            self.moving.insert(id);
        }
    }

    /// Waits for what moves runs on without the log: a move in flight
    /// answered, or a step task run here ended.
    pub(super) async fn answered(&mut self) -> Answer {
        tokio::select! {
            Some(done) = self.appends.join_next_with_id() => Answer::Appended(Box::new(done)),
            Some(ending) = self.endings.1.recv() => Answer::Ending(ending),
            Some(Ok(tasks)) = self.adoptions.join_next() => Answer::Adopted(tasks),
        }
    }

    /// Takes in what [`Driver::answered`] returned.
    pub(super) async fn take_answer(&mut self, answer: Answer) {
        match answer {
            Answer::Appended(done) => self.take_in(*done).await,
            Answer::Ending(ending) => self.take_ending(ending).await,
            Answer::Adopted(tasks) => {
                for task in tasks {
                    self.claimed.remove(&task);
                    if self.cancelled_early.remove(&task) {
                        self.orchestrator.handed_over(task).await;
                    }
                }
            }
        }
    }

    /// Takes in the answer to a move: the run as it is now, or read again
    /// after another writer moved it first; then moves what waits.
    async fn take_in(&mut self, done: Appended) {
        let (id, answer) = match done {
            Ok((task, answer)) => (self.in_flight.remove(&task), Ok(answer)),
            Err(e) => (self.in_flight.remove(&e.id()), Err(e)),
        };
        let Some(id) = id else {
            return;
        };
        self.moving.remove(&id);
        if self.pending.contains_key(&id) {
            // What came while the move was in flight moves it next.
            self.ready.push_back(id);
        }
        if !matches!(answer, Ok((_, Ok(_)))) {
            // Refused: it claimed nothing.
            self.claimed.retain(|_, run| *run != id);
        }
        match answer {
            Ok((mut prepared, Ok(_))) => {
                self.conflicts.remove(&id);
                let (submitted, stored) =
                    (std::mem::take(&mut prepared.submitted), prepared.stored);
                self.moved(prepared);
                // Its step tasks start now, beside this loop (an adoption
                // may wait for room under the orchestrator's limit, and
                // the tasks that hold it may wait for this run's next
                // move); they stay claimed until they run here.
                if !submitted.is_empty() {
                    let (orchestrator, sink) = (self.orchestrator.clone(), self.endings.0.clone());
                    self.adoptions.spawn(async move {
                        for task in &submitted {
                            if let Err(e) =
                                orchestrator.adopt_claimed(task, sink.clone(), stored).await
                            {
                                tracing::warn!(task = %task.id, error = %e,
                                    "a step task claimed here cannot run here");
                            }
                        }
                        submitted.into_iter().map(|t| t.id).collect()
                    });
                }
                // Another writer's event came after this move: read it.
                let held = self.runs.get(&id).map(|s| s.version);
                if let (Some(seen), Some(held)) = (self.seen.remove(&id), held)
                    && seen > held
                {
                    self.reread(id).await;
                }
            }
            // Moved by another writer first (or a task it would cancel
            // ended meanwhile): read it again and decide afresh, a few
            // times in a row at most.
            Ok((_, Err(StoreError::WrongExpectedVersion { .. } | StoreError::Rejected(_)))) => {
                self.seen.remove(&id);
                let tries = self.conflicts.entry(id).or_default();
                *tries += 1;
                if *tries > CONFLICTS {
                    self.conflicts.remove(&id);
                    self.failed(id, "moved by other writers every time; trying later");
                } else {
                    self.reread(id).await;
                }
            }
            Ok((_, Err(e))) => {
                self.seen.remove(&id);
                self.failed(id, &e.to_string());
            }
            Err(e) => {
                self.seen.remove(&id);
                self.failed(id, &format!("the append task failed: {e}"));
            }
        }
        self.flush().await;
    }

    /// What run `id` decides with `notes` reported to it, as the batch to
    /// append; `None` when it decides nothing (or cannot now). The tasks it
    /// schedules are known from now on, so their ends reach the run even
    /// when they come before the move is answered.
    async fn prepare(&mut self, id: Uuid, notes: Vec<Note>) -> Option<Move> {
        let stored = self.runs.get(&id)?;
        let mut endings = Vec::new();
        let pending = notes
            .into_iter()
            .filter_map(|note| {
                let (task, done, ending) = match note {
                    Note::Event(event) => return Some(event),
                    Note::TaskEnded(task, done) => (task, done, None),
                    Note::Ending(ending) => {
                        let (task, done) = log::task_end(&ending.event)?;
                        (task, done, Some(ending))
                    }
                };
                // An end no step waits for does not ride the move (dropped:
                // its task records it alone).
                let (step, item) = log::step_of(&stored.run, task)?;
                endings.extend(ending);
                Some(match done {
                    Ok(output) => RunEvent::StepCompleted { step, item, output },
                    Err(error) => RunEvent::StepFailed { step, item, error },
                })
            })
            .collect();
        let decision = log::decide(&stored.run, pending, Utc::now());
        if decision.events.is_empty() {
            // Nothing to ride: the tasks record their ends alone.
            return None;
        }
        for (_, _, task) in decision.next.outstanding() {
            self.tasks.insert(task, id);
        }
        let version = stored.version;
        let mut batch = decision.batch(id);
        if decision.next.end.is_some() {
            let reason = format!("workflow run {id} ended");
            match log::cancellations(self.store.as_ref(), &decision.next, &reason, id).await {
                Ok(cancellations) => batch.extend(cancellations),
                Err(e) => {
                    self.failed(id, &e.to_string());
                    return None;
                }
            }
        }
        let cancelled: std::collections::HashSet<Uuid> = batch
            .iter()
            .filter_map(|e| match &e.event {
                SystemEvent::TaskCancelled { task_id, .. } => Some(*task_id),
                _ => None,
            })
            .collect();
        // The ends it records come right after the run's own events (the
        // first of which carries the batch's expected version).
        let at = decision.events.len();
        let endings: Vec<(TaskEnding, u64)> = endings.into_iter().zip(at as u64..).collect();
        let rest = batch.split_off(at);
        batch.extend(
            endings
                .iter()
                .map(|(ending, _)| NewEvent::new(ending.event.clone(), id).caused_by(ending.task)),
        );
        // Each step task it submits is claimed for this kernel in the same
        // batch: it runs here as soon as the batch is stored.
        let kernel = self.orchestrator.kernel();
        let mut submitted = Vec::new();
        for event in rest {
            let claim = match &event.event {
                SystemEvent::TaskSubmitted { task_id, spec } if !cancelled.contains(task_id) => {
                    let mut task = TaskRecord::submitted(*task_id, spec.clone());
                    task.status = TaskStatus::Running;
                    task.attempts = 1;
                    task.kernel = kernel;
                    self.claimed.insert(task.id, id);
                    let started = SystemEvent::TaskStarted {
                        task_id: task.id,
                        attempt: 1,
                        kernel,
                    };
                    let claim = NewEvent::new(started, id).caused_by(task.id);
                    submitted.push(task);
                    Some(claim)
                }
                _ => None,
            };
            batch.push(event);
            batch.extend(claim);
        }
        Some(Move {
            decision,
            batch,
            version,
            submitted,
            endings,
            stored: std::time::Instant::now(),
        })
    }

    /// Takes in a move the store recorded: the run as it is now, and the
    /// sub-workflow runs it started.
    fn moved(&mut self, moved: Move) {
        let Move {
            decision, version, ..
        } = moved;
        let id = decision.next.id;
        let ended = decision.next.end.is_some();
        // Children started by a move that ended the run were cancelled in
        // its batch; one held already has moved past its start.
        let children = if ended { Vec::new() } else { decision.children };
        for (child, started) in children {
            if self.runs.contains_key(&child) {
                continue;
            }
            match Run::replay(child, [&started]) {
                Ok(run) => {
                    self.hold(Stored { run, version: 1 });
                    self.enqueue(child, Vec::new());
                }
                Err(e) => tracing::error!(run = %child, error = %e,
                    "a sub-workflow run started here cannot be read"),
            }
        }
        let version = version + decision.events.len() as u64;
        if self
            .runs
            .get(&id)
            .is_some_and(|held| held.version >= version)
        {
            return; // read again since: that copy is newer
        }
        self.hold(Stored {
            run: decision.next,
            version,
        });
        if ended {
            self.finished(id);
        }
    }

    /// Notes that run `id` could not be moved now; it is tried again soon.
    fn failed(&mut self, id: Uuid, error: &str) {
        tracing::warn!(run = %id, error, "workflow run not moved; trying again");
        if self.runs.contains_key(&id) {
            self.retry.insert(id, Utc::now() + RETRY_AFTER);
        }
    }
}
