package workflows

import (
	"context"

	"github.com/stretchr/testify/mock"

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
