"""transferlab: transfer learning for image classification (see README.md)."""
