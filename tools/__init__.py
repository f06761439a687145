"""Release and grading tools of the lab: make_student (student release), grading (pytest plugin)."""
