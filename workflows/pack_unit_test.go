package workflows

import (
	"context"
	"sync/atomic"
	"time"

	"github.com/stretchr/testify/mock"

	"go.temporal.io/sdk/temporal"

	"dcd/activities"
	"dcd/schemas"
)

// A pack started without sizes (from the API, not `starter pack`) gets the
// command's defaults: archives of DefaultPerArchive images, not one archive
// of the whole dataset, each read DefaultPackReaders at a time.
func (s *UnitTestSuite) TestPackDefaults() {
	env := s.NewTestWorkflowEnvironment()
	var a *activities.Activities
	env.OnActivity(a.PlanPack, mock.Anything, mock.Anything).Return(func(_ context.Context, in activities.PlanPackInput) (activities.PlanResult, error) {
		s.Equal(DefaultPerArchive, in.PerArchive)
		return activities.PlanResult{Shards: 3 * DefaultPackWindow, Images: 3 * DefaultPackWindow * DefaultPerArchive}, nil
	})
	env.OnActivity(a.PackArchive, mock.Anything, mock.Anything).Return(func(_ context.Context, in activities.PackArchiveInput) (activities.PackArchiveResult, error) {
		s.Equal(DefaultPackReaders, in.Readers)
		return activities.PackArchiveResult{Key: "k", Images: DefaultPerArchive}, nil
	})
	env.OnActivity(a.FinishPack, mock.Anything, mock.Anything).Return(0, nil)
	env.ExecuteWorkflow(PackWorkflow, PackInput{Dataset: schemas.Dataset{Manifest: "m.csv"}, Out: "out/"})
	s.Require().NoError(env.GetWorkflowError())
	var res PackResult
	s.Require().NoError(env.GetWorkflowResult(&res))
	s.Equal(3*DefaultPackWindow, res.Done)
	s.Equal(3*DefaultPackWindow*DefaultPerArchive, res.Packed)
}

// An archive that fails ends the pack once the archives running end: no
// other starts after it, in the slot it left.
func (s *UnitTestSuite) TestPackStopsAtAFailedArchive() {
	env := s.NewTestWorkflowEnvironment()
	var a *activities.Activities
	env.OnActivity(a.PlanPack, mock.Anything, mock.Anything).Return(activities.PlanResult{Shards: 10, Images: 100}, nil)
	var started atomic.Int32
	env.OnActivity(a.PackArchive, mock.Anything, mock.Anything).Return(func(_ context.Context, in activities.PackArchiveInput) (activities.PackArchiveResult, error) {
		started.Add(1)
		if in.Archive == 0 {
			return activities.PackArchiveResult{}, temporal.NewNonRetryableApplicationError("archive 0: refused", "PackRefused", nil)
		}
		time.Sleep(300 * time.Millisecond) // still running when archive 0 fails
		return activities.PackArchiveResult{Key: "k", Images: 10}, nil
	})
	env.ExecuteWorkflow(PackWorkflow, PackInput{Dataset: schemas.Dataset{Manifest: "m.csv"}, Out: "out/", Window: 2})
	s.ErrorContains(env.GetWorkflowError(), "archive 0: refused")
	s.Equal(int32(2), started.Load(), "archives started: the window's two, none after the failure")
}
