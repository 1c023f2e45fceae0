package main

import (
	"context"
	"fmt"
	"strings"

	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/converter"

	"dcd/schemas"
	"dcd/workflows"
)

// A pass whose task queue no worker polls waits there without an error:
// Temporal holds the task until some worker asks for it (a cluster's GPU
// workers may be starting). So the pass has no timeout for it, and the
// starter says so instead, when it starts the pass, while it watches one,
// and in `starter status`.

// passQueues are the task queues a pass of cfg waits on: its workflows and
// CPU activities, embedding, and an external trainer's when cfg has one.
func passQueues(cfg schemas.Config) []string {
	queues := []string{workflows.CPUQueue, workflows.GPUQueue}
	if cfg.Retrain.Trainer != nil {
		queues = append(queues, workflows.TrainQueue)
	}
	return queues
}

// idleQueues are those of queues that no worker has polled lately (the
// server forgets a poller a few minutes after its last poll). An error
// leaves the question open: nothing is said then.
func idleQueues(ctx context.Context, c client.Client, queues []string) ([]string, error) {
	var idle []string
	for _, q := range queues {
		d, err := c.DescribeTaskQueue(ctx, q, enumspb.TASK_QUEUE_TYPE_ACTIVITY)
		if err != nil {
			return nil, fmt.Errorf("describe task queue %s: %w", q, err)
		}
		if len(d.GetPollers()) == 0 {
			idle = append(idle, q)
		}
	}
	return idle, nil
}

// idleLine says which queues no worker polls and how to start one for
// them, or nothing when every queue has a worker; what waits is "pass" or
// "pack".
func idleLine(what string, idle []string) string {
	if len(idle) == 0 {
		return ""
	}
	var flags []string
	for _, q := range idle {
		flags = append(flags, strings.TrimPrefix(q, "dcd-"))
	}
	return fmt.Sprintf("no worker polls %s: the %s waits until one does (bin/worker -queues %s)",
		strings.Join(idle, ", "), what, strings.Join(flags, ","))
}

// warnIdle prints idleLine for queues to the CLI's stderr, if any is idle.
func (e *cli) warnIdle(ctx context.Context, c client.Client, what string, queues []string) {
	idle, err := idleQueues(ctx, c, queues)
	if line := idleLine(what, idle); err == nil && line != "" {
		fmt.Fprintln(e.stderr, "warning:", line)
	}
}

// runningQueues are the task queues the running pass or pack id waits on;
// a pass's follow from its config, its history's first event. A config
// that cannot be read leaves out the trainer's queue.
func runningQueues(ctx context.Context, c client.Client, id string, pack bool) []string {
	if pack {
		return packQueues
	}
	var in workflows.PassInput
	if ev, err := c.GetWorkflowHistory(ctx, id, "", false, enumspb.HISTORY_EVENT_FILTER_TYPE_ALL_EVENT).Next(); err == nil {
		converter.GetDefaultDataConverter().FromPayloads(ev.GetWorkflowExecutionStartedEventAttributes().GetInput(), &in)
	}
	return passQueues(in.Config)
}
