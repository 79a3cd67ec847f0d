"""The submit side: plan a query, place its tasks on peers, drive it, stream the result back."""
