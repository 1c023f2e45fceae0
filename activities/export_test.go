package activities

// What the external tests reach of the package's insides.
var (
	CheckpointEvery   = &checkpointEvery
	PlanCheckpointKey = planCheckpointKey
	SharedWait        = &testHookSharedWait
)

// PlanCheckpoint is a plan's stored progress.
type PlanCheckpoint = planCheckpoint
