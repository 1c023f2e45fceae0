package main

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	enumspb "go.temporal.io/api/enums/v1"
	workflowpb "go.temporal.io/api/workflow/v1"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/temporal"

	"dcd/workflows"
)

// A pass whose task queue no worker polls waits there without an error:
// Temporal holds the task until some worker asks for it (a cluster's GPU
// workers may be starting). So the pass has no timeout for it, and the
// starter says so instead, when it starts a pass and while it watches one.
//
// No poller alone does not say no worker: a worker whose activity slots
// are all taken stops polling until one frees. So a queue is named only
// when an activity has waited there a while and none of the pass's runs
// there; a worker busy with other passes' work for longer than the server
// remembers a poller (5 minutes) is named as none.

// waitedLong is how long an activity waits for a worker before its queue
// may be named: a worker just started may not have polled yet.
var waitedLong = 30 * time.Second

// queueOf is the task queue an activity type runs on (workflows' options).
func queueOf(activityType string) string {
	switch activityType {
	case "EmbedShard":
		return workflows.GPUQueue
	case "TrainExternal":
		return workflows.TrainQueue
	}
	return workflows.CPUQueue
}

// pendingActivities are the activities the workflows ids (a pass and its
// running children, or a pack) have under way or waiting. A workflow that
// cannot be described (a child just finished) is left out.
func pendingActivities(ctx context.Context, c client.Client, ids []string) []*workflowpb.PendingActivityInfo {
	var pending []*workflowpb.PendingActivityInfo
	for _, id := range ids {
		if d, err := c.DescribeWorkflowExecution(ctx, id, ""); err == nil {
			pending = append(pending, d.GetPendingActivities()...)
		}
	}
	return pending
}

// starvedQueues are the task queues on which pending has an activity that
// has waited waitedLong to start, while none of them runs there and no
// worker polls it; and the CPU queue when no worker polls its workflow
// tasks, which a worker asks for whatever its activities do.
func starvedQueues(ctx context.Context, c client.Client, pending []*workflowpb.PendingActivityInfo, now time.Time) ([]string, error) {
	waiting, running := map[string]bool{}, map[string]bool{}
	for _, pa := range pending {
		q := queueOf(pa.GetActivityType().GetName())
		switch pa.GetState() {
		case enumspb.PENDING_ACTIVITY_STATE_SCHEDULED:
			// A retry waiting out its backoff waits for the clock.
			retry := pa.GetNextAttemptScheduleTime()
			since := pa.GetScheduledTime()
			if (retry == nil || retry.AsTime().Before(now)) && since != nil && now.Sub(since.AsTime()) >= waitedLong {
				waiting[q] = true
			}
		default:
			running[q] = true
		}
	}
	var starved []string
	for _, q := range []string{workflows.CPUQueue, workflows.GPUQueue, workflows.TrainQueue} {
		idle := false
		if waiting[q] && !running[q] {
			polled, err := hasPollers(ctx, c, q, enumspb.TASK_QUEUE_TYPE_ACTIVITY)
			if err != nil {
				return nil, err
			}
			idle = !polled
		}
		if q == workflows.CPUQueue && !idle {
			polled, err := hasPollers(ctx, c, q, enumspb.TASK_QUEUE_TYPE_WORKFLOW)
			if err != nil {
				return nil, err
			}
			idle = !polled
		}
		if idle {
			starved = append(starved, q)
		}
	}
	return starved, nil
}

// hasPollers says whether a worker has polled queue for tasks of type t
// lately (the server forgets a poller five minutes after its last poll).
func hasPollers(ctx context.Context, c client.Client, queue string, t enumspb.TaskQueueType) (bool, error) {
	return polledSince(ctx, c, queue, t, time.Time{})
}

// polledSince says whether a worker has polled queue for tasks of type t
// since the time given.
func polledSince(ctx context.Context, c client.Client, queue string, t enumspb.TaskQueueType, since time.Time) (bool, error) {
	d, err := c.DescribeTaskQueue(ctx, queue, t)
	if err != nil {
		return false, fmt.Errorf("describe task queue %s: %w", queue, err)
	}
	for _, p := range d.GetPollers() {
		if p.GetLastAccessTime().AsTime().After(since) {
			return true, nil
		}
	}
	return false, nil
}

// idleLine says which queues no worker takes work from and how to start
// one for them, or nothing when queues is empty; what waits is "pass" or
// "pack". The worker's command names the server and namespace g names
// where they are not a worker's defaults.
func idleLine(what string, queues []string, g globals) string {
	if len(queues) == 0 {
		return ""
	}
	var flags []string
	for _, q := range queues {
		flags = append(flags, strings.TrimPrefix(q, "dcd-"))
	}
	worker := "bin/worker -queues " + strings.Join(flags, ",")
	if g.address != "127.0.0.1:7233" {
		worker += " -address " + g.address
	}
	if g.namespace != "default" {
		worker += " -namespace " + g.namespace
	}
	return fmt.Sprintf("no worker has polled %s lately: the %s waits until one does (%s)",
		strings.Join(queues, ", "), what, worker)
}

// warnNoWorkflowWorker warns on stderr when no worker polls the CPU
// queue's workflow tasks, where a pass or schedule just made starts.
func (e *cli) warnNoWorkflowWorker(ctx context.Context, c client.Client, what string) {
	if polled, err := hasPollers(ctx, c, workflows.CPUQueue, enumspb.TASK_QUEUE_TYPE_WORKFLOW); err == nil && !polled {
		fmt.Fprintln(e.stderr, "warning:", idleLine(what, []string{workflows.CPUQueue}, e.g))
	}
}

// A stuck is what a watch adds to its progress line: the queues a
// workflow waits on without a worker, or nothing.
type stuck func(ctx context.Context, now time.Time) string

// passStuck looks at a pass and the children it runs.
func passStuck(c client.Client, id string, g globals) stuck {
	return func(ctx context.Context, now time.Time) string {
		// A pass no worker has taken does not answer its query until
		// the deadline: asked first whether a worker takes workflows,
		// and then with a short one, leaving the rest to describe it.
		if polled, err := hasPollers(ctx, c, workflows.CPUQueue, enumspb.TASK_QUEUE_TYPE_WORKFLOW); err == nil && !polled {
			return idleLine("pass", []string{workflows.CPUQueue}, g)
		}
		ids := []string{id}
		var p workflows.Progress
		qctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		if query(qctx, c, id, &p) == nil {
			ids = append(ids, p.Running...)
		}
		cancel()
		pending := pendingActivities(ctx, c, ids)
		q, err := starvedQueues(ctx, c, pending, now)
		if err != nil {
			return ""
		}
		return joinNotes(idleLine("pass", q, g), retryLine(pending))
	}
}

// packStuck looks at a pack, which runs its activities itself.
func packStuck(c client.Client, id string, g globals) stuck {
	return func(ctx context.Context, now time.Time) string {
		pending := pendingActivities(ctx, c, []string{id})
		q, err := starvedQueues(ctx, c, pending, now)
		if err != nil {
			return ""
		}
		return joinNotes(idleLine("pack", q, g), retryLine(pending))
	}
}

// retriedAfter is the try from which an activity retrying is named: a
// first retry is often a store's or a worker's passing trouble.
const retriedAfter = 3

// retryLine names the activities of pending on their third try or later,
// with why the last failed: a step that fails on every try (a limit too
// short, a store refusing) looks stuck otherwise, retried for minutes
// before its pass fails.
func retryLine(pending []*workflowpb.PendingActivityInfo) string {
	var named []string
	more := 0
	for _, pa := range pending {
		if pa.GetAttempt() < retriedAfter || pa.GetLastFailure() == nil {
			continue
		}
		if len(named) == 2 {
			more++
			continue
		}
		why := failureCause(temporal.GetDefaultFailureConverter().FailureToError(pa.GetLastFailure()), true)
		named = append(named, fmt.Sprintf("%s is on its try %d; the last failed: %s", stepName(pa.GetActivityType().GetName(), pa.GetActivityId()), pa.GetAttempt(), why))
	}
	if more > 0 {
		named = append(named, fmt.Sprintf("and %d more steps are retrying", more))
	}
	return strings.Join(named, "; ")
}

// joinNotes joins the non-empty notes as a progress line joins its parts.
func joinNotes(notes ...string) string {
	return strings.Join(slices.DeleteFunc(notes, func(n string) bool { return n == "" }), " | ")
}
