"""Components every page shares: the model picker, the job panel and the export panel."""
