package workflows

import (
	"go.temporal.io/sdk/client"

	"dcd/schemas"
)

// PassSchedule is a Temporal Schedule that starts a DebugPass with cfg on
// the cpu queue whenever spec fires, e.g. nightly as the pool grows; each
// pass reuses the cached features and embeds only new shards. A firing whose
// previous pass still runs is skipped (Temporal's default overlap policy).
// Workflow IDs are "<id>-pass-<time>".
func PassSchedule(id string, spec client.ScheduleSpec, cfg schemas.Config, paused bool) client.ScheduleOptions {
	return client.ScheduleOptions{
		ID:     id,
		Spec:   spec,
		Paused: paused,
		Action: &client.ScheduleWorkflowAction{
			ID:        id + "-pass",
			Workflow:  DebugPass,
			Args:      []any{PassInput{Config: cfg}},
			TaskQueue: CPUQueue,
		},
	}
}
