use std::sync::atomic::AtomicBool;

use super::*;

const LONG: Duration = Duration::from_secs(30);

fn deadline() -> Instant {
    Instant::now() + LONG
}

/// Whether `ticket`'s turn comes within 200 ms while a backend is free.
async fn goes(ticket: &mut Ticket) -> bool {
    let turn = ticket.turn(|| None, deadline());
    tokio::time::timeout(Duration::from_millis(200), turn)
        .await
        .is_ok()
}

#[tokio::test]
async fn the_first_goes_when_a_backend_frees_up_and_an_answer_with_room_lets_two_more_go() {
    let room = WaitingRoom::new(10);
    let mut tickets: Vec<Ticket> = (0..4)
        .map(|_| room.enter(Some("d"), false).unwrap())
        .collect();
    assert!(room.busy(Some("d")));
    assert!(!room.busy(Some("other")));
    // Cooling for 50 ms: the first waits for it; the others wait for answers.
    let cooling_until = Instant::now() + Duration::from_millis(50);
    let free_in = || cooling_until.checked_duration_since(Instant::now());
    let started = Instant::now();
    assert_eq!(tickets[0].turn(free_in, deadline()).await, Turn::Go);
    assert!(started.elapsed() >= Duration::from_millis(45));
    // Free now, but the first has not been answered: nobody else goes.
    assert!(!goes(&mut tickets[1]).await);
    let first = tickets.remove(0);
    first.answered(true, false);
    assert!(goes(&mut tickets[0]).await);
    assert!(goes(&mut tickets[1]).await);
    assert!(!goes(&mut tickets[2]).await, "only two after one answer");
}

#[tokio::test]
async fn a_429_lets_nobody_go_and_its_request_is_first_again() {
    let room = WaitingRoom::new(10);
    let mut a = room.enter(None, false).unwrap();
    let mut b = room.enter(None, false).unwrap();
    assert!(goes(&mut a).await);
    a.answered(false, true);
    // `a` comes back to the front: `b` is second, and `a` goes first once free.
    let mut a = room.enter(None, true).unwrap();
    assert!(!goes(&mut b).await);
    assert!(goes(&mut a).await);
    // Any other answer lets one go.
    a.answered(false, false);
    assert!(goes(&mut b).await);
}

#[tokio::test]
async fn a_request_that_leaves_frees_its_place_and_passes_on_its_turn() {
    let room = WaitingRoom::new(2);
    let a = room.enter(Some("d"), false).unwrap();
    let mut b = room.enter(Some("d"), false).unwrap();
    assert!(room.enter(Some("d"), false).is_none(), "max_waiting is 2");
    assert!(
        room.enter(Some("e"), false).is_none(),
        "for every deployment"
    );
    drop(a);
    assert_eq!(room.held.load(Ordering::Acquire), 1);
    assert!(goes(&mut b).await, "b is first now");
    // Let go and gone without an answer: the next goes in its place.
    let mut c = room.enter(Some("d"), false).unwrap();
    drop(b);
    assert!(goes(&mut c).await);
    c.answered(true, false);
    assert!(!room.busy(Some("d")), "nobody left in line");
    assert_eq!(room.busy.load(Ordering::Acquire), 0);
}

#[tokio::test]
async fn a_request_let_go_while_not_looking_passes_its_turn_on() {
    let room = WaitingRoom::new(10);
    let mut a = room.enter(None, false).unwrap();
    let b = room.enter(None, false).unwrap();
    let mut c = room.enter(None, false).unwrap();
    assert!(goes(&mut a).await);
    a.answered(true, false);
    // `b` and `c` were let go; `b` leaves without looking: `c` keeps its turn, and the line
    // goes on with `c`'s answer.
    drop(b);
    assert!(goes(&mut c).await);
    let mut d = room.enter(None, false).unwrap();
    c.answered(false, false);
    assert!(goes(&mut d).await);
}

#[tokio::test]
async fn the_wait_ends_at_the_deadline_or_at_once_when_no_backend_frees_up_before_it() {
    let room = WaitingRoom::new(10);
    let mut a = room.enter(None, false).unwrap();
    let mut b = room.enter(None, false).unwrap();
    // The first in line: its backend frees up only after its deadline, so it ends now.
    let started = Instant::now();
    let never = || Some(LONG);
    let until = Instant::now() + Duration::from_millis(300);
    assert_eq!(a.turn(never, until).await, Turn::TimedOut);
    assert!(started.elapsed() < Duration::from_millis(200));
    // The second waits its turn until its deadline.
    let until = Instant::now() + Duration::from_millis(60);
    assert_eq!(b.turn(never, until).await, Turn::TimedOut);
    assert!(started.elapsed() >= Duration::from_millis(55));
    drop((a, b));
    assert_eq!(room.held.load(Ordering::Acquire), 0);
    assert!(!room.busy(None));
}

#[tokio::test]
async fn only_the_first_in_line_asks_when_a_backend_is_free() {
    let room = WaitingRoom::new(10);
    let _first = room.enter(None, false).unwrap();
    let mut second = room.enter(None, false).unwrap();
    let asked = AtomicBool::new(false);
    let free_in = || {
        asked.store(true, Ordering::Relaxed);
        None
    };
    let turn = second.turn(free_in, deadline());
    assert!(tokio::time::timeout(Duration::from_millis(100), turn)
        .await
        .is_err());
    assert!(!asked.load(Ordering::Relaxed));
}

#[tokio::test]
async fn an_answer_that_is_slow_to_come_holds_the_line_one_patience_at_most() {
    let room = WaitingRoom::new(10);
    let mut a = room.enter(None, false).unwrap();
    let mut b = room.enter(None, false).unwrap();
    // `b` waits already when `a` goes: `a` going wakes it to watch the clock.
    let second = tokio::spawn(async move {
        let started = Instant::now();
        let turn = b.turn(|| None, deadline()).await;
        (turn, started.elapsed(), b)
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(goes(&mut a).await);
    // `a` is out and unanswered.
    let (turn, waited, _b) = second.await.unwrap();
    assert_eq!(turn, Turn::Go);
    assert!(
        waited >= PATIENCE - Duration::from_millis(250) && waited < PATIENCE * 2,
        "{waited:?}"
    );
}

#[tokio::test]
async fn the_max_follows_a_reload() {
    let room = WaitingRoom::new(1);
    let _a = room.enter(None, false).unwrap();
    assert!(room.enter(None, false).is_none());
    room.set_max(2);
    assert!(room.enter(None, false).is_some());
}

#[tokio::test]
async fn newcomers_queue_only_behind_requests_that_wait() {
    let room = WaitingRoom::new(10);
    let mut a = room.enter(None, false).unwrap();
    assert!(room.busy(None));
    assert!(goes(&mut a).await);
    // Let go and not answered yet: nobody waits, so a newcomer goes straight on.
    assert!(!room.busy(None));
    a.answered(true, false);
    assert_eq!(room.busy.load(Ordering::Acquire), 0);
}
